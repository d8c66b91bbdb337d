"""The fault run's clients: keyed batches retried until acknowledged, reads meanwhile.

Writer threads post batches, each with a fresh ``Idempotency-Key``, and retry
every failure (connection errors, 5xx, timeouts) with the same key and
payload, alternating instances, until one is acknowledged (204). Some batches
touch more than 127 sensors, so the service splits them into several
transactions; some are sent to both instances at once (a hedged request:
concurrent duplicates). Reader threads read statistics meanwhile. Every
attempt and every read goes into the `History`, with its start and end.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

from tests.support.harness import HTTP_FAILURES, CheckFailed, problem_detail, since_start
from tests.tools.faults_processes import Instance, now

WRITERS = 4
READERS = 2
WRITER_PAUSE = (0.01, 0.04)  # seconds between a writer's batches: bounded load
READER_PAUSE = (0.005, 0.02)
HOT_SENSORS = [f"hot-{i}" for i in range(10)] + ["room 1/temp", "ü/%2F?#"]
WIDE_SENSORS = [f"wide-{i:03d}" for i in range(300)]
# Of batches, touching 130 to 260 sensors: keyed, 3 to 5 transactions on a, 6 to 12 on b.
LARGE_SHARE = 0.15
HEDGED_SHARE = 0.05  # of small batches, sent to both instances at once
# The service's write deadline is 5 s (SENSORSTATS_WRITE_TIMEOUT); a client
# that waits longer sees the service's own answer rather than its timeout.
REQUEST_TIMEOUT = 8.0
READ_TIMEOUT = 5.0
RETRY_PAUSE_CAP = 1.0  # a client retries sooner than Retry-After: the other instance may serve
# After the nemesis, writers finish the batch in hand, retrying for at most this long.
DRAIN_SECONDS = 20.0


# --- HTTP ------------------------------------------------------------------------


class Connections:
    """One client thread's keep-alive connections, one per port; dropped on any failure."""

    def __init__(self) -> None:
        self._by_port: dict[int, http.client.HTTPConnection] = {}

    def request(
        self,
        port: int,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, bytes]:
        connection = self._by_port.pop(port, None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._by_port[port] = connection
        return answer.status, data

    def close(self) -> None:
        for connection in self._by_port.values():
            connection.close()
        self._by_port.clear()


def statistics_path(sensor: str) -> str:
    """The GET path of `sensor`, percent-encoded."""
    return "/statistics/" + quote(sensor, safe="")


# What each kind of failed attempt says about whether the batch was applied.
UNKNOWN, NOT_APPLIED, PARTLY_APPLIED = "outcome unknown", "not applied", "partly applied"


def failure_kind(error: BaseException | None, status: int, body: bytes) -> tuple[str, str]:
    """(kind, what it says about the outcome) of an attempt that was not a 204."""
    if error is not None:
        if isinstance(error, ConnectionRefusedError):
            return "connection refused", NOT_APPLIED
        if isinstance(error, TimeoutError):
            return "client timeout", UNKNOWN
        return "connection lost", UNKNOWN
    if status == 503:
        detail = problem_detail(body)
        # The circuit breaker's fast failure never reached etcd; its detail
        # quotes the failure that opened it, which may say "outcome is unknown".
        if detail.startswith("not sent to the store"):
            return "503 circuit breaker open", NOT_APPLIED
        if "were applied" in detail:
            return "503 partly applied", PARTLY_APPLIED
        if "outcome is unknown" in detail:
            return "503 outcome unknown", UNKNOWN
        if "not applied" in detail:
            return "503 not applied", NOT_APPLIED
        return "503 other", UNKNOWN
    if status == 409:
        return "409 in flight", NOT_APPLIED
    return f"{status}", UNKNOWN


def read_failure_kind(error: BaseException | None, status: int, body: bytes) -> str:
    """Why a GET failed, in few enough words to count."""
    kind = failure_kind(error, status, body)[0]
    if kind.startswith("503") and kind != "503 circuit breaker open":
        return "503 store unavailable"
    return kind


# What a read may fail with while etcd or an instance is down.
EXPECTED_READ_FAILURES = {
    "connection refused",
    "connection lost",
    "client timeout",
    "503 circuit breaker open",
    "503 store unavailable",
}


# --- the workload and its history ------------------------------------------------


BASE_INSTANT = datetime(2024, 3, 1, tzinfo=UTC)
OFFSETS = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30))]


@dataclass(frozen=True)
class Measurement:
    """One measurement as sent, with its instant for finding the latest."""

    sensor: str
    timestamp: str
    instant: datetime
    value: float | int


@dataclass
class Attempt:
    """One try of a batch on one instance, as the client saw it."""

    instance: str
    start: float
    end: float
    kind: str  # "204" or a failure kind
    outcome: str  # "applied", or what the failure says about it
    detail: str = ""


@dataclass
class WriteOp:
    """One batch with its key: retried until acknowledged."""

    number: int
    key: str
    measurements: list[Measurement]
    large: bool
    hedged: bool
    body: bytes = b""
    attempts: list[Attempt] = field(default_factory=list)
    start: float | None = None  # when its first attempt was sent
    acked: float | None = None  # when its first 204 arrived
    violation: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.body = json.dumps(
            [
                {"sensor": m.sensor, "timestamp": m.timestamp, "value": m.value}
                for m in self.measurements
            ]
        ).encode()


@dataclass(frozen=True)
class ReadOp:
    """One successful GET of a sensor's statistics, with when it started and ended."""

    sensor: str
    instance: str
    start: float
    end: float
    count: int
    avg: float
    last: str | None


class History:
    """Everything the clients did, shared by their threads."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.writes: list[WriteOp] = []
        self.reads: list[ReadOp] = []
        self.read_failures: Counter[str] = Counter()
        self._numbers = itertools.count()
        self._instants = itertools.count(1)
        self._lock = threading.Lock()

    def new_write(self, rng: random.Random) -> WriteOp:
        large = rng.random() < LARGE_SHARE
        if large:
            sensors = rng.sample(WIDE_SENSORS, rng.randint(130, 260))
            sensors += rng.sample(sensors, rng.randint(0, 10))  # a few twice
        else:
            chosen = rng.sample(HOT_SENSORS, rng.randint(1, 3))
            sensors = [rng.choice(chosen) for _ in range(rng.randint(1, 6))]
        with self._lock:
            number = next(self._numbers)
            # Every measurement has its own instant: the latest is never a tie.
            instants = [
                BASE_INSTANT + timedelta(milliseconds=next(self._instants)) for _ in sensors
            ]
        measurements = []
        for sensor, instant in zip(sensors, instants, strict=True):
            text = instant.astimezone(rng.choice(OFFSETS)).isoformat(timespec="milliseconds")
            if text.endswith("+00:00") and rng.random() < 0.5:
                text = text[: -len("+00:00")] + "Z"
            measurements.append(Measurement(sensor, text, instant, random_value(rng)))
        op = WriteOp(
            number,
            key=f"faults-{uuid.UUID(int=rng.getrandbits(128))}",
            measurements=measurements,
            large=large,
            hedged=not large and rng.random() < HEDGED_SHARE,
        )
        with self._lock:
            self.writes.append(op)
        return op

    def dump(self, path: Path) -> None:
        """The whole history as JSON lines, times in seconds since the suite started."""

        def since(moment: float | None) -> float | None:
            return None if moment is None else round(since_start(moment), 4)

        with open(path, "w") as out:
            for op in self.writes:
                record = {
                    "write": op.number,
                    "key": op.key,
                    "measurements": len(op.measurements),
                    "sensors": len({m.sensor for m in op.measurements}),
                    "start": since(op.start),
                    "acked": since(op.acked),
                    "attempts": [
                        [a.instance, since(a.start), since(a.end), a.kind, a.outcome, a.detail]
                        for a in op.attempts
                    ],
                }
                out.write(json.dumps(record) + "\n")
            for read in self.reads:
                record = {
                    "read": read.sensor,
                    "instance": read.instance,
                    "start": since(read.start),
                    "end": since(read.end),
                    "count": read.count,
                    "avg": read.avg,
                    "last": read.last,
                }
                out.write(json.dumps(record) + "\n")

    def add_read(self, read: ReadOp) -> None:
        with self._lock:
            self.reads.append(read)

    def read_failed(self, kind: str) -> None:
        with self._lock:
            self.read_failures[kind] += 1


def random_value(rng: random.Random) -> float | int:
    """Values whose exact mean differs from a naive float mean more often than not."""
    roll = rng.random()
    if roll < 0.3:
        return rng.randint(-1000, 1000)
    if roll < 0.9:
        return round(rng.uniform(-100, 100), rng.choice([1, 2, 3, 6]))
    return rng.choice([0.1, 1e15 + 0.5, -3e-7, 123456.789])


# --- the threads ---------------------------------------------------------------------


class Clients:
    """Writer and reader threads that post, retry, read and record the history."""

    def __init__(
        self, instances: Sequence[Instance], history: History, *, keys: bool = True
    ) -> None:
        self.instances = list(instances)
        self.history = history
        self.keys = keys
        self.stop_writing = threading.Event()  # no new batches
        self.give_up = threading.Event()  # no more retries
        self.stop_reading = threading.Event()
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()  # guards _in_flight
        self._threads: list[threading.Thread] = []

    def in_flight(self, instance: Instance) -> int:
        with self._lock:
            return self._in_flight[instance.name]

    def start(self, seed: int) -> None:
        for index in range(WRITERS):
            self._spawn(self._writer, f"writer-{index}", random.Random(f"{seed}-w{index}"))
        for index in range(READERS):
            self._spawn(self._reader, f"reader-{index}", random.Random(f"{seed}-r{index}"))

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, name=name, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def finish(self) -> None:
        """Stop new batches; let each writer finish its batch for DRAIN_SECONDS, then stop."""
        self.stop_writing.set()
        writers = [t for t in self._threads if t.name.startswith("writer")]
        deadline = now() + DRAIN_SECONDS
        for thread in writers:
            thread.join(max(0.0, deadline - now()))
        self.give_up.set()
        self.stop_reading.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 2)
        hanging = [t.name for t in self._threads if t.is_alive()]
        if hanging:
            raise CheckFailed(f"client threads hang: {', '.join(hanging)}")

    def retry_unacknowledged(self, seconds: float) -> list[WriteOp]:
        """Retry every batch not yet acknowledged, in parallel, for at most `seconds`."""
        pending = [op for op in self.history.writes if op.acked is None and not op.violation]
        give_up = threading.Event()
        timer = threading.Timer(seconds, give_up.set)
        timer.start()
        queue = list(pending)
        lock = threading.Lock()

        def work(index: int) -> None:
            rng = random.Random(f"{self.history.seed}-final{index}")
            connections = Connections()
            try:
                while not give_up.is_set():
                    with lock:
                        if not queue:
                            return
                        op = queue.pop()
                    self._run(connections, op, rng, give_up)
            finally:
                connections.close()

        workers = [threading.Thread(target=work, args=(i,)) for i in range(WRITERS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(seconds + REQUEST_TIMEOUT + 2)
        timer.cancel()
        return pending

    # --- writing ---

    def _writer(self, rng: random.Random) -> None:
        connections = Connections()
        try:
            while not self.stop_writing.is_set():
                op = self.history.new_write(rng)
                self._run(connections, op, rng, self.give_up)
                self.stop_writing.wait(rng.uniform(*WRITER_PAUSE))
        finally:
            connections.close()

    def _run(
        self, connections: Connections, op: WriteOp, rng: random.Random, give_up: threading.Event
    ) -> None:
        """Post `op` until acknowledged, alternating instances, until `give_up`."""
        instances = self.instances
        for attempt in itertools.count():
            instance = instances[(op.number + attempt) % len(instances)]
            if attempt == 0 and op.hedged:
                # The same request to the other instance at the same moment.
                other = instances[(op.number + 1) % len(instances)]
                twin = threading.Thread(target=self._post_alone, args=(op, other))
                twin.start()
                self._post(connections, op, instance)
                twin.join()
            else:
                self._post(connections, op, instance)
            if op.acked is not None or op.violation or give_up.is_set():
                return
            give_up.wait(min(RETRY_PAUSE_CAP, 0.05 * 2**attempt) * rng.uniform(0.5, 1.0))

    def _post_alone(self, op: WriteOp, instance: Instance) -> None:
        connections = Connections()
        try:
            self._post(connections, op, instance)
        finally:
            connections.close()

    def _post(self, connections: Connections, op: WriteOp, instance: Instance) -> None:
        """One attempt: send, wait for the answer, record what it says."""
        # Both spellings the service accepts: a Structured Field string and a bare token.
        headers = {"Content-Type": "application/json"}
        if self.keys:
            headers["Idempotency-Key"] = f'"{op.key}"' if op.number % 2 else op.key
        status, body, error = 0, b"", None
        with self._lock:
            self._in_flight[instance.name] += 1
        start = now()
        with op.lock:
            if op.start is None:
                op.start = start
        try:
            status, body = connections.request(
                instance.port, "POST", "/data", op.body, headers, REQUEST_TIMEOUT
            )
        except HTTP_FAILURES as failure:
            error = failure
        finally:
            with self._lock:
                self._in_flight[instance.name] -= 1
        end = now()
        if error is None and status == 204:
            attempt = Attempt(instance.name, start, end, "204", "applied")
        else:
            kind, outcome = failure_kind(error, status, body)
            detail = str(error) if error else problem_detail(body)
            attempt = Attempt(instance.name, start, end, kind, outcome, detail)
        with op.lock:
            op.attempts.append(attempt)
            if attempt.kind == "204" and op.acked is None:
                op.acked = end
            # A refusal of the batch itself: retrying cannot help, and is
            # wrong for the service to say of a payload that was valid.
            if error is None and 400 <= status < 500 and status != 409:
                op.violation = (
                    f"batch {op.number} ({len(op.measurements)} measurements), attempt "
                    f"{len(op.attempts)} on {instance.name}: {status} {attempt.detail}"
                )

    # --- reading ---

    def _reader(self, rng: random.Random) -> None:
        connections = Connections()
        instances = self.instances
        try:
            for n in itertools.count():
                if self.stop_reading.is_set():
                    return
                pool = HOT_SENSORS if rng.random() < 0.7 else WIDE_SENSORS
                sensor = rng.choice(pool)
                instance = instances[n % len(instances)]
                start = now()
                try:
                    status, body = connections.request(
                        instance.port, "GET", statistics_path(sensor), None, {}, READ_TIMEOUT
                    )
                except HTTP_FAILURES as error:
                    self.history.read_failed(read_failure_kind(error, 0, b""))
                else:
                    end = now()
                    if status == 200:
                        got = json.loads(body)
                        self.history.add_read(
                            ReadOp(
                                sensor,
                                instance.name,
                                start,
                                end,
                                got["count"],
                                got["avg"],
                                got["last_measurement"],
                            )
                        )
                    else:
                        self.history.read_failed(read_failure_kind(None, status, body))
                self.stop_reading.wait(rng.uniform(*READER_PAUSE))
        finally:
            connections.close()


def final_statistics(
    instance: Instance, sensors: Sequence[str]
) -> dict[str, tuple[int, float, str | None]]:
    """Every sensor's statistics as `instance` reports them, after healing."""
    connections = Connections()
    found: dict[str, tuple[int, float, str | None]] = {}
    try:
        for sensor in sensors:
            deadline = now() + READ_TIMEOUT * 2
            while True:
                try:
                    status, body = connections.request(
                        instance.port, "GET", statistics_path(sensor), None, {}, READ_TIMEOUT
                    )
                except HTTP_FAILURES:
                    status, body = 0, b""
                if status == 200:
                    got = json.loads(body)
                    found[sensor] = (got["count"], got["avg"], got["last_measurement"])
                    break
                if now() > deadline:
                    raise CheckFailed(
                        f"{instance.name} does not answer GET for {sensor!r} after healing: "
                        f"{status} {problem_detail(body)}"
                    )
                time.sleep(0.2)
    finally:
        connections.close()
    return found
