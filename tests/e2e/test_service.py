"""End to end: a real `python -m sensorstats` process, spoken to over HTTP as curl would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensorstats.settings import OPTIONS
from tests.support.ports import free_ports
from tests.support.service import ROOT, Service, run_module, start_service, statistics_path

SAMPLE = [{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(
        args=["--max-body-bytes", "4096", "--max-batch", "20"],
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


def wait_for(condition, timeout: float = 15.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def test_exercise_sample_round_trip(service: Service) -> None:
    # `curl -d` sends application/x-www-form-urlencoded; the body is JSON anyway.
    posted = service.post(
        "/data",
        json.dumps([{**SAMPLE[0], "sensor": "e2e-abc"}]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status == 204
    assert posted.body == b""
    answer = service.get("/statistics/e2e-abc")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json == {
        "last_measurement": "2021-11-09T21:38:09+01:00",
        "count": 1,
        "avg": 3.14,
    }


def test_unknown_sensor_is_empty(service: Service) -> None:
    answer = service.get("/statistics/never-posted")
    assert (answer.status, answer.json) == (
        200,
        {"last_measurement": None, "count": 0, "avg": 0.0},
    )


@pytest.mark.parametrize(
    "sensor",
    ["a/b", "a b", "50%", "%2F", "..", "what?", "#1", "温度/ü", "x" * 256],
    ids=[
        "slash",
        "space",
        "percent",
        "literal-%2F",
        "dotdot",
        "question",
        "hash",
        "unicode",
        "256",
    ],
)
def test_awkward_ids_round_trip_over_http(service: Service, sensor: str) -> None:
    sensor = f"e2e-{sensor}"[:256]
    assert service.post("/data", [{**SAMPLE[0], "sensor": sensor, "value": 2}]).status == 204
    assert service.get(statistics_path(sensor)).json["count"] == 1
    assert service.delete(statistics_path(sensor)).status == 204
    assert service.get(statistics_path(sensor)).json["count"] == 0


def test_slash_in_path_and_encoded_slash_name_the_same_sensor(service: Service) -> None:
    assert service.post("/data", [{**SAMPLE[0], "sensor": "e2e/x/y"}]).status == 204
    assert service.get("/statistics/e2e/x/y").json["count"] == 1
    assert service.get("/statistics/e2e%2Fx%2Fy").json["count"] == 1
    assert service.get("/statistics/e2e/x").json["count"] == 0


def test_invalid_utf8_in_path_is_rejected_not_replaced(service: Service) -> None:
    answer = service.get("/statistics/%FF")
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json"


def test_body_over_limit_is_413_problem_and_server_stays_healthy(service: Service) -> None:
    body = json.dumps([{**SAMPLE[0], "sensor": "e2e-big" + "x" * 5000}])
    answer = service.post("/data", body)
    assert answer.status == 413
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json["status"] == 413
    assert service.get("/healthz").status == 204


def test_chunked_body_over_limit_is_413(service: Service) -> None:
    chunk = b"[" + b" " * 5000 + b"]"
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            b"POST /data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(chunk):x}\r\n".encode()
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 413")


def test_batch_over_item_limit_is_413(service: Service) -> None:
    answer = service.post("/data", [SAMPLE[0]] * 21)
    assert answer.status == 413
    assert service.get("/healthz").status == 204


def test_invalid_batch_names_index_and_field(service: Service) -> None:
    batch = [{**SAMPLE[0], "sensor": "e2e-partial"}, {**SAMPLE[0], "timestamp": "yesterday"}]
    answer = service.post("/data", batch)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert [(e["index"], e["field"]) for e in answer.json["errors"]] == [(1, "timestamp")]
    assert service.get("/statistics/e2e-partial").json["count"] == 0


def test_health_and_liveness(service: Service) -> None:
    assert service.get("/healthz").status == 204
    assert service.get("/livez").status == 204


def test_unknown_route_and_wrong_method_are_problems(service: Service) -> None:
    missing = service.get("/nope")
    assert (missing.status, missing.headers["content-type"]) == (404, "application/problem+json")
    wrong = service.delete("/data")
    assert wrong.status == 405
    assert "POST" in wrong.headers["allow"]


def test_help_lists_every_option() -> None:
    result = run_module("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flag in result.stdout
        assert option.env in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--port", "http"], {}, "--port"),
        ([], {"SENSORSTATS_MAX_BATCH": "0"}, "SENSORSTATS_MAX_BATCH"),
        ([], {"SENSORSTATS_ETCD_ENDPOINTS": "ftp://etcd:2379"}, "SENSORSTATS_ETCD_ENDPOINTS"),
        (["--no-such-flag"], {}, "--no-such-flag"),
    ],
)
def test_bad_setting_exits_2_with_one_line(
    args: list[str], env: dict[str, str], names: str
) -> None:
    result = run_module(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert names in lines[0]


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_module("--host", "127.0.0.1", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_start_up_says_the_store_is_in_memory(service: Service) -> None:
    assert "in-memory" in service.log()


def _send_half_a_post(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(
        b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body[: len(body) // 2]
    )
    return sock


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    body = json.dumps([{**SAMPLE[0], "sensor": "drain"}]).encode()
    with start_service(
        args=["--drain-delay", "3", "--shutdown-timeout", "20"], log_dir=tmp_path
    ) as svc:
        in_flight = _send_half_a_post(svc.port, body)
        svc.terminate()
        # Draining: not ready, but still serving until the listener closes.
        wait_for(lambda: svc.get("/healthz").status == 503)
        assert svc.get("/statistics/drain").status == 200
        wait_for(lambda: _refuses_connections(svc.port))
        # The request that was in flight when SIGTERM came is still answered.
        in_flight.sendall(body[len(body) // 2 :])
        assert in_flight.recv(64).startswith(b"HTTP/1.1 204")
        in_flight.close()
        assert svc.wait(timeout=20) == 0
        assert "all requests answered" in svc.log()


def test_shutdown_timeout_bounds_the_drain(tmp_path: Path) -> None:
    body = json.dumps(SAMPLE).encode()
    with start_service(args=["--shutdown-timeout", "0.5"], log_dir=tmp_path) as svc:
        stalled = _send_half_a_post(svc.port, body)  # never completed
        svc.terminate()
        assert svc.wait(timeout=20) == 0
        stalled.close()
        assert "abandoning 1 unfinished" in svc.log()


def _pid_namespace() -> list[str]:
    """unshare's command line for a new PID namespace with its own /proc."""
    if os.geteuid() == 0:
        return ["unshare", "--fork", "--pid", "--mount-proc"]
    # Without root, a PID namespace takes a user namespace of its own, this
    # user mapped to its root (unprivileged user namespaces, on by default).
    return ["unshare", "--user", "--map-root-user", "--fork", "--pid", "--mount-proc"]


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs util-linux unshare")
def test_sigterm_as_pid_1_drains_and_exits_0(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    log = (tmp_path / "pid1.log").open("wb")
    outer = subprocess.Popen(
        [
            *_pid_namespace(),
            *(sys.executable, "-m", "sensorstats", "--host", "127.0.0.1", "--port", str(port)),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: not _refuses_connections(port))
        children = subprocess.run(
            ["pgrep", "-P", str(outer.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        if not children:
            pytest.skip("unshare did not start a PID namespace here")
        pid_one = int(children[0])
        status = Path(f"/proc/{pid_one}/status").read_text().splitlines()
        nspid = next(line for line in status if line.startswith("NSpid"))
        assert nspid.split()[-1] == "1"  # really PID 1 inside its namespace
        os.kill(pid_one, signal.SIGTERM)
        assert outer.wait(timeout=20) == 0
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(5)
        log.close()
    assert "all requests answered" in (tmp_path / "pid1.log").read_text()


def test_the_sensor_cap_answers_507_and_a_delete_makes_room(tmp_path: Path) -> None:
    def batch(*sensors: str) -> list[dict[str, object]]:
        return [{**SAMPLE[0], "sensor": sensor} for sensor in sensors]

    with start_service(args=["--max-sensors", "2"], log_dir=tmp_path) as svc:
        assert svc.post("/data", batch("a", "b")).status == 204
        refused = svc.post("/data", batch("a", "c"))
        assert refused.status == 507
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json["limit"] == 2
        assert svc.get("/statistics/a").json["count"] == 1  # nothing of it was stored
        assert svc.get("/healthz").status == 204  # full is not unhealthy
        assert svc.delete("/statistics/b").status == 204
        assert svc.post("/data", batch("a", "c")).status == 204
        assert "at most 2 sensors" in svc.log()
