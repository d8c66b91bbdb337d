"""The fault suite's processes: etcd members and sensorstats instances.

Instances start on a fixed loopback port, so that one killed can come back on
the same one; etcd members (`tests.support.etcd_process`) report their leader and
database size through etcd's gRPC JSON gateway. Everything here is stopped
by PID by whoever started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.etcd_process import EtcdProcess
from tests.support.harness import (
    ROOT,
    SetupFailed,
    answers,
    log_tail,
    stop_process,
    wait_until,
)

# The suite's log and its clock, as the checker and the clients import them from here.
from tests.support.harness import log as log
from tests.support.harness import since_start as since_start

STOP_TIMEOUT = 10.0
READY_TIMEOUT = 20.0


def now() -> float:
    """The clock every time in the history is read from (`since_start` takes its readings)."""
    return time.monotonic()


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
        return answers(self.port, "/healthz", 204)

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
        if self.process is not None:
            stop_process(self.process, f"instance {self.name}", STOP_TIMEOUT)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)
