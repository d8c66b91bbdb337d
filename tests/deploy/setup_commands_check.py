"""The README's two set-up commands, run as a new user would: on Debian's own Python.

    .venv/bin/tox -e setup

Debian 12 and Ubuntu 23.04+ mark their system Python as externally managed
(PEP 668): `pip install` into it fails with externally-managed-environment.
The commands are read from the README's "Set up" section, not copied here,
and run with bash from a fresh clone of this repository, with Debian's
/usr/bin/python3 first on PATH (CI's own PATH puts pyenv's python3 first):

- the run command installs, starts the service and serves the exercise's
  sample; SIGTERM to the service's PID ends the command with status 0;
- the test command installs tox, with its final `tox` made `tox -l` so that
  it lists the environments instead of running this suite again.

Not collected by `tox -e py` (the file name does not start with test_): it
installs from the package index and takes a minute.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.support.ports import free_ports
from tests.support.programs import obtain
from tests.support.service import request, statistics_path
from tests.support.skips import Unavailable

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
DEBIAN_PYTHON = Path("/usr/bin/python3")

SAMPLE = '[{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]'
SAMPLE_STATS = {"last_measurement": "2021-11-09T21:38:09+01:00", "count": 1, "avg": 3.14}
EMPTY_STATS = {"last_measurement": None, "count": 0, "avg": 0.0}

# Installing from the package index on a slow day; never a pass/fail on speed.
INSTALL_TIMEOUT = 600.0
STOP_TIMEOUT = 30.0


def setup_commands() -> tuple[str, str]:
    """The two one-line shell commands of the README's "Set up" section: run, test."""
    text = README.read_text()
    match = re.search(r"^## Set up\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Set up' section"
    blocks = re.findall(r"^```sh\n(.*?)^```$", match.group(1), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, f"expected the run and the test command, found {blocks}"
    run, test = (block.strip() for block in blocks)
    assert "\n" not in run, "the run command is one line"
    assert "\n" not in test, "the test command is one line"
    return run, test


@pytest.fixture(scope="module")
def debian_python() -> Path:
    """Debian's python3 with venv (python3-venv), installed with apt-get if missing."""

    def usable() -> bool:
        check = [str(DEBIAN_PYTHON), "-c", "import ensurepip, venv"]
        return DEBIAN_PYTHON.exists() and subprocess.run(check, capture_output=True).returncode == 0

    if not usable():
        try:
            obtain(["python3", "python3-venv"], "Debian's python3 with venv")
        except Unavailable as problem:
            missing(str(problem))
        assert usable(), "apt-get installed python3-venv, yet venv does not import"
    return DEBIAN_PYTHON


@pytest.fixture
def shell_env(debian_python: Path) -> dict[str, str]:
    """A login-like environment whose python3 is Debian's: nothing of tox or pyenv first."""
    tox_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != tox_bin]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SENSORSTATS_", "TOX_", "COVERAGE_", "PYTEST_"))
        and key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")
    }
    env["PATH"] = os.pathsep.join([str(debian_python.parent), *path])
    return env


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of this repository's committed state."""
    target = tmp_path / "sensorstats"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(target)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def test_ci_runs_the_readme_test_command_exactly() -> None:
    _, test = setup_commands()
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert test in commands


def test_debian_python_refuses_a_system_wide_install(shell_env: dict[str, str]) -> None:
    """The trap the commands avoid is real here: PEP 668's marker on the interpreter they get."""
    probe = "import sys, sysconfig; print(sys.prefix); print(sysconfig.get_path('stdlib'))"
    result = subprocess.run(
        ["bash", "-c", f"python3 -c {shlex.quote(probe)}"],
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    prefix, stdlib = result.stdout.split()
    assert prefix == "/usr"
    assert (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


@pytest.fixture
def started(
    clone: Path, shell_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The README's run command in the clone, on a free loopback port; killed by PID at the end."""
    run, _ = setup_commands()
    (port,) = free_ports(1)
    env = {**shell_env, "SENSORSTATS_HOST": "127.0.0.1", "SENSORSTATS_PORT": str(port)}
    log_path = clone.parent / "run-command.log"
    with open(log_path, "wb") as log:
        shell = subprocess.Popen(
            ["bash", "-c", run],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to clean up after a failure
        )
    try:
        yield shell, port
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(STOP_TIMEOUT)
        print(log_path.read_text(errors="replace")[-3000:])


def test_the_run_command_serves_the_exercise_sample(
    started: tuple[subprocess.Popen[bytes], int], clone: Path
) -> None:
    shell, port = started
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + INSTALL_TIMEOUT
    while True:
        assert shell.poll() is None, f"the run command exited {shell.returncode}"
        assert time.monotonic() < deadline, "the service never answered /livez"
        try:
            if request(url, "GET", "/livez", timeout=2).status == 204:
                break
        except OSError:
            time.sleep(0.5)

    assert request(url, "GET", statistics_path("abc")).json == EMPTY_STATS
    assert request(url, "POST", "/data", SAMPLE).status == 204
    assert request(url, "GET", statistics_path("abc")).json == SAMPLE_STATS

    # The service is the command's last step: the shell itself (bash may exec
    # a list's last command) or its child, running the clone's venv on
    # Debian's interpreter.
    (service,) = [
        pid
        for pid in [shell.pid, *_children(shell.pid)]
        if b"sensorstats" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert Path(f"/proc/{service}/cwd").resolve() == clone.resolve()
    assert Path(f"/proc/{service}/exe").resolve() == DEBIAN_PYTHON.resolve()
    assert (clone / ".venv" / "pyvenv.cfg").exists()
    os.kill(service, signal.SIGTERM)
    assert shell.wait(STOP_TIMEOUT) == 0


def test_the_test_command_sets_up_tox(clone: Path, shell_env: dict[str, str]) -> None:
    _, test = setup_commands()
    words = shlex.split(test.rsplit("&&", 1)[-1])
    assert Path(words[-1]).name == "tox", f"the test command does not end in tox: {test}"
    listing = test + " -l"  # list the environments; running them would recurse
    result = subprocess.run(
        ["bash", "-c", listing],
        cwd=clone,
        env=shell_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    listed = set(result.stdout.split())
    envlist = re.search(r"^envlist = (.*)$", (clone / "tox.ini").read_text(), re.MULTILINE)
    assert envlist
    expected = {name.strip() for name in envlist.group(1).split(",")}
    assert expected <= listed, result.stdout
    home = (clone / ".venv" / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", home, re.MULTILINE), home
