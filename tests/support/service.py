"""Real `python -m sensorstats` processes for end-to-end tests, and a tiny HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.support.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 15.0


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTP request on a fresh connection, as curl would send it."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        payload = body.encode() if isinstance(body, str) else body
        connection.request(method, path, body=payload, headers=dict(headers or {}))
        answer = connection.getresponse()
        return Response(
            answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        )
    finally:
        connection.close()


def statistics_path(sensor: str) -> str:
    """The GET/DELETE path of a sensor id, percent-encoded."""
    return "/statistics/" + quote(sensor, safe="")


class Service:
    """One running `python -m sensorstats` process on a free loopback port."""

    def __init__(self, env: Mapping[str, str], args: list[str], log_path: Path) -> None:
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        command = [sys.executable, "-m", "sensorstats", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), *args]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.pid = self.process.pid

    def wait_until_live(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sensorstats exited early:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/livez").status == 204:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sensorstats did not start:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs: Any) -> Response:
        return request(self.url, "GET", path, **kwargs)

    def post(self, path: str, body: bytes | str | list[Any] | None, **kwargs: Any) -> Response:
        if isinstance(body, list):
            body = json.dumps(body)
        return request(self.url, "POST", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        return request(self.url, "DELETE", path, **kwargs)

    def terminate(self) -> None:
        """Send SIGTERM, as a container runtime would."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@contextlib.contextmanager
def start_service(
    env: Mapping[str, str] | None = None,
    args: list[str] | None = None,
    log_dir: Path | None = None,
) -> Iterator[Service]:
    """A live service for the duration of the block, stopped by PID afterwards."""
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    log_path = log_dir / f"sensorstats-{os.getpid()}-{time.monotonic_ns()}.log"
    service = Service(env or {}, args or [], log_path)
    try:
        service.wait_until_live()
        yield service
    finally:
        service.stop()


def run_module(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m sensorstats *args` to completion, with only `env`'s SENSORSTATS_* settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTATS_")}
    return subprocess.run(
        [sys.executable, "-m", "sensorstats", *args],
        env={**inherited, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def read_response(sock: socket.socket, head: bool = False) -> tuple[bytes, dict[str, str], bytes]:
    """One response: status line, headers (lower-case names), body by Content-Length.

    `head`: the answer to a HEAD request, whose Content-Length announces no body.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a complete head: {data!r}")
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = top.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]
