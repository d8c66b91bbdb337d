"""The fault suite's processes: etcd members and sensorstats instances.

Instances start on a fixed loopback port, so that one killed can come back on
the same one; etcd members (`tests.etcd_process`) report their leader and
database size through etcd's gRPC JSON gateway. Everything here is stopped
by PID by whoever started it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.etcd_process import EtcdProcess

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 10.0
READY_TIMEOUT = 20.0

_started = time.monotonic()


class CheckFailed(Exception):
    """The service did not behave as the contract says."""


class SetupFailed(Exception):
    """The suite could not build its topology; says nothing about the service."""


def log(message: str) -> None:
    """One line of the suite's output, with the seconds since it started."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", flush=True)


def now() -> float:
    """The clock every time in the history is read from."""
    return time.monotonic()


def since_start(moment: float) -> float:
    """A `now()` as seconds since the suite started, as the log shows times."""
    return moment - _started


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    failure: type[Exception] = SetupFailed,
) -> None:
    """Poll `predicate` until it holds; raise `failure` after `timeout` seconds."""
    deadline = now() + timeout
    while not predicate():
        if now() > deadline:
            raise failure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# --- etcd, through its JSON gateway ------------------------------------------


def gateway(member: EtcdProcess, path: str, body: dict[str, Any], timeout: float = 3.0) -> Any:
    """POST `body` to etcd's gRPC JSON gateway (``/v3/...``) and decode the answer."""
    request = urllib.request.Request(
        member.url + path, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


@dataclass(frozen=True)
class Status:
    """A member's Maintenance Status: who it is, who leads, how big its database is."""

    member_id: str
    leader: str
    revision: int
    db_size: int
    db_size_in_use: int

    @classmethod
    def of(cls, member: EtcdProcess) -> Status:
        answer = gateway(member, "/v3/maintenance/status", {})
        return cls(
            member_id=answer["header"]["member_id"],
            leader=answer.get("leader", "0"),
            revision=int(answer["header"]["revision"]),
            db_size=int(answer["dbSize"]),
            db_size_in_use=int(answer["dbSizeInUse"]),
        )


def leader_of(members: Sequence[EtcdProcess]) -> EtcdProcess:
    """The member that is raft leader now, as it reports itself."""
    deadline = now() + READY_TIMEOUT
    while now() < deadline:
        for member in members:
            with contextlib.suppress(OSError, ValueError, KeyError):
                status = Status.of(member)
                if status.member_id == status.leader:
                    return member
        time.sleep(0.1)
    raise SetupFailed("no etcd member reports itself as leader")


def alarms(member: EtcdProcess) -> list[str]:
    """The alarms raised in the cluster, e.g. ``NOSPACE``."""
    answer = gateway(member, "/v3/maintenance/alarm", {"action": "GET"})
    return [str(alarm.get("alarm", "NONE")) for alarm in answer.get("alarms", [])]


def compact(member: EtcdProcess) -> Status:
    """Drop all history up to now; the pages it frees are free once this returns."""
    revision = Status.of(member).revision
    gateway(member, "/v3/kv/compaction", {"revision": revision, "physical": True}, 30.0)
    time.sleep(0.2)  # the backend commits its batch of frees every 100 ms
    return Status.of(member)


def defragment(member: EtcdProcess) -> Status:
    """Rewrite the database file with only what lives, densely packed."""
    gateway(member, "/v3/maintenance/defragment", {}, 30.0)
    return Status.of(member)


def member_running(member: EtcdProcess) -> bool:
    process = member._process  # EtcdProcess has no public "running"
    return process is not None and process.poll() is None


# --- sensorstats instances ------------------------------------------------------


# A request fails without an answer: refused, reset, timed out, or a
# connection closed before the whole answer came (http.client's exceptions).
HTTP_FAILURES = (OSError, http.client.HTTPException)


def plain_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def problem_detail(body: bytes) -> str:
    """The `detail` of a problem document, else the start of the body."""
    try:
        return str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        return " ".join(body[:160].decode(errors="replace").split())


class Instance:
    """One ``python -m sensorstats`` on a fixed loopback port, restartable on it."""

    def __init__(
        self, name: str, port: int, endpoints: Sequence[str], directory: Path, **env: str
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = directory / f"{name}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTATS_")}
        self.env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "SENSORSTATS_ETCD_ENDPOINTS": ",".join(endpoints),
                "SENSORSTATS_LOG_LEVEL": "WARNING",
                **env,
            }
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running()
        argv = [sys.executable, "-m", "sensorstats", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log_file:
            try:
                self.process = subprocess.Popen(
                    argv,
                    env=self.env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            except OSError as error:
                raise SetupFailed(f"cannot start {self.name}: {error}") from None
        self.starts += 1

    def ready(self) -> bool:
        try:
            return plain_request(self.port, "GET", "/healthz", timeout=1.0)[0] == 204
        except HTTP_FAILURES:
            return False

    def wait_ready(
        self, timeout: float = READY_TIMEOUT, failure: type[Exception] = SetupFailed
    ) -> None:
        """Wait for /healthz 204; `failure` says whose fault it is if it never comes."""
        what = f"instance {self.name} to be ready"
        wait_until(lambda: self.ready() or not self.running(), timeout, what, failure)
        if not self.running():
            raise failure(f"instance {self.name} exited:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a lost node would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if not self.running():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])
