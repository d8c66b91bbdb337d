"""Offline checks of kube/monitoring/: rules, their unit tests, the Operator's objects, dashboard.

promtool (Debian's `prometheus` package, installed with apt-get when missing
and running as root on Debian or Ubuntu, else these tests skip, or fail
under CI, naming it) checks the rule file and runs its unit tests; the
PrometheusRule must be the rendering of the rule file; the PodMonitors and the
NetworkPolicy must select the manifest's pods and name their ports; the
dashboard must be well-formed Grafana JSON whose expressions parse. That the
alerts fire on a real Prometheus scraping real instances, and that every
panel draws data, is tests/tools/monitoring_check.py's part (`tox -e
monitoring`).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from sensorstats.ops.metrics import Metrics
from sensorstats.web.app import METRICS_ROUTE
from tests.conftest import missing
from tests.deploy.test_deploy import MANIFEST, _kustomize, _load, _validate
from tests.support.programs import ensure_program
from tests.support.skips import Unavailable
from tests.tools import monitoring_rules
from tests.unit.ops.test_metrics import Scrape

MONITORING = Path(__file__).resolve().parents[2] / "kube" / "monitoring"
RULES = MONITORING / "sensorstats-rules.yaml"
RULE_TESTS = MONITORING / "sensorstats-rules.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
PODMONITORS = MONITORING / "podmonitors.yaml"
SCRAPE_CONFIGS = MONITORING / "scrape-configs.yaml"
OPERATOR_API = "monitoring.coreos.com/v1"
# The jobs the rules name, and the app.kubernetes.io/name of their pods.
JOBS = {"sensorstats", "etcd"}
# Grafana's own variable, which Prometheus does not know.
RATE_INTERVAL = "$__rate_interval"
GRID_COLUMNS = 24
# Served by the instances (etcd's own and `up` are the live check's to find).
OURS = ("sensorstats_", "process_")

Manifest = dict[str, Any]


def _promtool() -> str:
    try:
        return ensure_program("promtool", "prometheus")
    except Unavailable as problem:
        missing(str(problem))


def _promtool_run(*args: str) -> str:
    result = subprocess.run(
        [_promtool(), *args], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _rules() -> list[Manifest]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _names(expr: str) -> set[str]:
    """The metric names an expression selects (promql-parser's walk would do; this is short)."""
    return set(re.findall(r"\b((?:sensorstats|process|etcd)_\w+|up)\b", expr))


def _served() -> set[str]:
    """The metric families an instance serves."""
    return set(Scrape(Metrics().exposition(None)[0].decode()).families)


def _family(name: str) -> str:
    return re.sub(r"_(bucket|count|sum|total)$", "", name)


# --- the rule file -------------------------------------------------------------------


def test_promtool_checks_the_rule_file() -> None:
    output = _promtool_run("check", "rules", RULES.name)
    assert f"SUCCESS: {len(_rules())} rules found" in output


def test_the_rules_unit_tests_pass() -> None:
    output = _promtool_run("test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in output


def test_every_alert_has_a_case_that_fires_and_one_that_must_not() -> None:
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        assert group.get("interval"), f"{group['name']}: promtool 2.42 needs its interval"
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    alerts = {rule["alert"] for rule in _rules()}
    assert set(cases) == alerts
    assert {name: fires for name, fires in cases.items() if fires != {True, False}} == {}


def test_every_rule_parses_and_names_served_metrics() -> None:
    served = _served()
    for rule in _rules():
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        ours = {_family(n) for n in _names(rule["expr"]) if n.startswith(OURS)}
        assert ours <= served, f"{rule['alert']}: {ours - served} not served"
        assert set(re.findall(r'job="(\w+)"', rule["expr"])) <= JOBS
    names = {rule["alert"] for rule in _rules()}
    assert {"SensorstatsInstanceNotReady", "SensorstatsEtcdErrors", "SensorstatsDown"} <= names
    assert {"SensorstatsWriteConflicts", "SensorstatsP99Latency"} <= names


def test_the_prometheus_rule_is_the_rendering_of_the_rule_file() -> None:
    """Edit sensorstats-rules.yaml, then `python tests/tools/monitoring_rules.py`."""
    rendered = monitoring_rules.render(RULES.read_text())
    assert monitoring_rules.PROMETHEUS_RULE.read_text() == rendered
    (rule,) = _load(rendered)
    assert (rule["apiVersion"], rule["kind"]) == (OPERATOR_API, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


# --- the scrape configuration without the Operator -------------------------------------


def test_promtool_checks_the_scrape_configs_with_the_rules(tmp_path: Path) -> None:
    """Debian builds Prometheus without Kubernetes discovery: a static target stands in for it."""
    config = yaml.safe_load(SCRAPE_CONFIGS.read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert "SUCCESS" in _promtool_run("check", "config", str(path))
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS


def test_the_scrape_configs_keep_the_pods_the_manifest_annotates() -> None:
    jobs = {j["job_name"]: j for j in yaml.safe_load(SCRAPE_CONFIGS.read_text())["scrape_configs"]}
    relabel = jobs["sensorstats"]["relabel_configs"]
    keep = {r["source_labels"][0]: r["regex"] for r in relabel if r.get("action") == "keep"}
    assert keep["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "sensorstats"
    port_rule = next(r for r in relabel if r.get("target_label") == "__address__")
    match = re.fullmatch(port_rule["regex"], "10.0.0.7:9999;8080")
    assert match is not None
    assert port_rule["replacement"].replace("$1", match[1]).replace("$2", match[2]) == (
        "10.0.0.7:8080"
    )
    (etcd_keep,) = [r for r in jobs["etcd"]["relabel_configs"] if r.get("action") == "keep"]
    etcd = _workload("etcd")
    labels = etcd["spec"]["template"]["metadata"]["labels"]
    values = [labels["app.kubernetes.io/name"], labels["app.kubernetes.io/part-of"], "metrics"]
    assert re.fullmatch(etcd_keep["regex"], ";".join(values))
    assert "metrics" in _port_names(etcd)


# --- the Operator's objects, the policy, the dashboard's ConfigMap ------------------


@pytest.fixture(scope="module")
def rendering() -> list[Manifest]:
    return _load(_kustomize(MONITORING))


def _workload(name: str) -> Manifest:
    (workload,) = [
        o
        for o in _load(MANIFEST.read_text())
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == name
    ]
    return workload


def _selected(selector: dict[str, str]) -> list[Manifest]:
    return [
        o
        for o in _load(MANIFEST.read_text())
        if o["kind"] in ("Deployment", "StatefulSet")
        and all(
            o["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()
        )
    ]


def _port_names(workload: Manifest) -> set[str]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return {p["name"] for c in containers for p in c.get("ports", []) if "name" in p}


def test_the_kustomization_renders_the_operators_objects_and_the_dashboard(
    rendering: list[Manifest],
) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendering)
    assert kinds == [
        ("ConfigMap", "sensorstats-dashboard"),
        ("NetworkPolicy", "etcd-metrics"),
        ("PodMonitor", "etcd"),
        ("PodMonitor", "sensorstats"),
        ("PrometheusRule", "sensorstats"),
    ]
    (config_map,) = [o for o in rendering if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["sensorstats.json"]) == json.loads(DASHBOARD.read_text())
    for operator_object in (o for o in rendering if o["apiVersion"] == OPERATOR_API):
        assert "namespace" not in operator_object["metadata"]
        assert set(operator_object) == {"apiVersion", "kind", "metadata", "spec"}


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_the_rendering_is_valid_kubernetes_objects_beside_the_operators(
    rendering: list[Manifest], tmp_path: Path, which: str
) -> None:
    """kubernetes-validate has no schemas for the Operator's kinds: they are checked below."""
    standard = [o for o in rendering if o["apiVersion"] != OPERATOR_API]
    path = tmp_path / "standard.yaml"
    path.write_text(yaml.safe_dump_all(standard))
    _validate([path], which)


def test_the_pod_monitors_scrape_the_apps_and_etcds_named_ports() -> None:
    monitors = {m["metadata"]["name"]: m for m in _load(PODMONITORS.read_text())}
    assert set(monitors) == JOBS
    paths = {"sensorstats": METRICS_ROUTE, "etcd": "/metrics"}
    for job, monitor in monitors.items():
        assert (monitor["apiVersion"], monitor["kind"]) == (OPERATOR_API, "PodMonitor")
        spec = monitor["spec"]
        assert set(spec) <= {"jobLabel", "selector", "podMetricsEndpoints"}
        (workload,) = _selected(spec["selector"]["matchLabels"])
        assert workload["metadata"]["name"] == job
        # The job the rules name: the value of the pods' jobLabel.
        assert workload["spec"]["template"]["metadata"]["labels"][spec["jobLabel"]] == job
        (endpoint,) = spec["podMetricsEndpoints"]
        assert set(endpoint) <= {"port", "path", "interval"}
        assert endpoint["port"] in _port_names(workload)
        assert endpoint["path"] == paths[job]
    (app,) = monitors["sensorstats"]["spec"]["podMetricsEndpoints"]
    annotations = _workload("sensorstats")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == app["path"]


def test_the_policy_opens_only_etcds_metrics_port_to_prometheus(
    rendering: list[Manifest],
) -> None:
    (policy,) = [o for o in rendering if o["kind"] == "NetworkPolicy"]
    (workload,) = _selected(policy["spec"]["podSelector"]["matchLabels"])
    assert workload["metadata"]["name"] == "etcd"
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    assert "metrics" in _port_names(workload)
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


# --- the dashboard -------------------------------------------------------------------


def test_the_dashboard_is_grafana_json_whose_panels_tile_the_grid() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(set(refs)) == len(refs), panel["title"]


def test_the_dashboards_expressions_parse_and_draw_what_operators_look_at() -> None:
    served = _served()
    named: set[str] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace(RATE_INTERVAL, "5m")
            promql_parser.parse(expr)
            names = _names(expr)
            ours = {_family(n) for n in names if n.startswith(OURS)}
            assert ours <= served, f"{panel['title']}: {ours - served} not served"
            named |= names
    assert {
        "sensorstats_http_requests_total",
        "sensorstats_http_request_duration_seconds_bucket",
        "sensorstats_measurements_ingested_total",
        "sensorstats_etcd_calls_total",
        "sensorstats_etcd_write_attempts_total",
        "sensorstats_etcd_writes_per_transaction_count",
        "sensorstats_store_circuit_breaker_open",
        "sensorstats_ready",
        "sensorstats_connections_open",
    } <= named
