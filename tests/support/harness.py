"""What the standalone test scripts share: their log, their processes, their tools, their main.

The scripts (tests/tools/rehearsal.py, bench.py, faults.py, image_check.py) run
outside pytest, start real processes and must leave none behind, whatever
happens. Here is each piece of that plumbing once:

- `log`: one line of output, with the seconds since the script started;
- `SetupFailed` and `CheckFailed`: whose fault a failure is (exit 2 or 1);
- `Processes`: everything a script started, stopped by PID (`stop_process`);
- `wait_until` and `eventually`: polling with a deadline, `answers` for HTTP;
- `run`: a command to completion (the programs it needs: `programs`);
- `run_script` and `time_limit`: the exit status, signals and clean-up, and
  the skip when the machine lacks what the script needs (`skips`).

Stdlib only, so that the scripts need nothing beyond the app's requirements.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support import skips
from tests.support.skips import Unavailable

ROOT = Path(__file__).resolve().parents[2]
# How long a process may take to exit after SIGTERM, and to be reaped after SIGKILL.
STOP_TIMEOUT = 5.0

_started = time.monotonic()


class SetupFailed(Exception):
    """The script could not build what it needs; says nothing about the service."""


class CheckFailed(Exception):
    """The service did not behave as the contract says."""


class TimeLimitExceeded(Exception):
    """A script's overall time limit ran out: a hang, counted as a failure."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception`
    on the way swallows it: it must unwind every finally clause that stops
    processes.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log(message: str) -> None:
    """One line of the script's output, with the seconds since it started."""
    print(f"[{since_start(time.monotonic()):6.1f}s] {message}", flush=True)


def since_start(moment: float) -> float:
    """A `time.monotonic()` as seconds since the script started, as `log` shows times."""
    return moment - _started


def check(condition: bool, message: str) -> None:
    """Raise CheckFailed with `message` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message)


def indented_tail(text: str, lines: int = 15) -> str:
    """The last `lines` lines of `text`, indented to stand out in the log."""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def log_tail(path: Path, lines: int = 15) -> str:
    """The indented end of a process's log file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return indented_tail(text, lines)


# --- waiting ---------------------------------------------------------------------


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Whether `predicate` comes true within `timeout` seconds, polled every `interval`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    failure: type[Exception] = SetupFailed,
) -> None:
    """Poll `predicate` until it holds; raise `failure` after `timeout` seconds."""
    if not eventually(predicate, timeout):
        raise failure(f"timed out after {timeout:.0f} s waiting for {what}")


# What a request can fail with besides an answer: refused, reset, timed out,
# or a connection closed before the whole answer came (http.client's own).
HTTP_FAILURES = (OSError, http.client.HTTPException)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One plain HTTP request to 127.0.0.1:`port` on a fresh connection: (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def answers(port: int, path: str, status: int, timeout: float = 1.0) -> bool:
    """Whether GET `path` on `port` answers `status` now (readiness probes)."""
    try:
        return http_request(port, "GET", path, timeout=timeout)[0] == status
    except HTTP_FAILURES:
        return False


def problem_detail(body: bytes) -> str:
    """The `detail` of a problem document, else the start of the body."""
    try:
        return str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        return " ".join(body[:160].decode(errors="replace").split())


# --- processes -------------------------------------------------------------------


def stop_process(popen: subprocess.Popen[bytes], name: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait `timeout` seconds, then SIGKILL: never leaves the process behind."""
    if popen.poll() is None:
        popen.terminate()
    wait_or_kill(popen, name, timeout)


def wait_or_kill(popen: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    """Wait for a process told to stop; SIGKILL it if it is still there after `timeout`."""
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
        popen.kill()
        popen.wait(timeout)


@dataclass
class Process:
    """One process a script started, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL, as a node crash or an OOM kill would; reaped before this returns."""
        self.popen.kill()
        self.popen.wait(timeout)

    def output(self) -> str:
        """Everything it wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


@dataclass
class Processes:
    """Everything a script started, to be stopped by PID whatever happens."""

    directory: Path  # the log files, NAME.log
    stop_timeout: float = STOP_TIMEOUT
    started: list[Process] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Process:
        """Spawn `argv` in the repository, its output to NAME.log; SetupFailed if it cannot."""
        log_path = self.directory / f"{name}.log"
        with open(log_path, "wb") as log_file:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=ROOT,
                )
            except OSError as error:
                raise SetupFailed(f"cannot start {name}: {error}") from None
        process = Process(name, popen, log_path)
        self.started.append(process)
        return process

    def conclude(self, status: int) -> int:
        """After the script: on success (or a skip) its logs go; else they stay.

        On a failure every process's log tail is shown and the folder named.
        """
        if status == 0:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for process in self.started:
                log(f"{process.name} (pid {process.pid}) log tail:\n{process.log_tail()}")
            log(f"logs kept in {self.directory}")
        return status

    def stop_all(self) -> None:
        """SIGTERM everything still running, wait, then SIGKILL what is left."""
        # All are told first, so that they stop side by side rather than in turn.
        for process in self.started:
            if process.running():
                process.popen.terminate()
        for process in self.started:
            wait_or_kill(process.popen, process.name, self.stop_timeout)


# --- commands ------------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdin: Any = None,
    failure: type[Exception] = SetupFailed,
) -> str:
    """Run a command to completion; its combined output, or `failure` with that output."""
    try:
        result = subprocess.run(
            list(argv),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise failure(f"`{' '.join(argv)}` took longer than {timeout:.0f} s") from None
    except OSError as error:
        raise failure(f"cannot run {argv[0]}: {error}") from None
    if result.returncode != 0:
        output = indented_tail(result.stdout, 25)
        raise failure(f"`{' '.join(argv)}` exited {result.returncode}:\n{output}")
    return result.stdout


# --- main ------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Raise TimeLimitExceeded in the main thread if the block takes longer than `seconds`."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeLimitExceeded(f"{what} took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # The first signal unwinds; a second one must not cut the clean-up short.
    for stop_signal in _STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    raise Interrupted(signum)


def run_script(
    work: Callable[[], int],
    clean_up: Callable[[], None] = lambda: None,
    *,
    failures: tuple[type[Exception], ...] = (),
    failed: str = "FAILED",
    passed: str = "",
) -> int:
    """Run a script's `work` and `clean_up`; the exit status, with the reason logged.

    `work` returns 0 when every check passed (then `passed` is logged, after
    `clean_up`) or 1 when one did not. Unavailable, the machine lacking a
    program it cannot install, skips the script: 0 with the one line that
    names what to install, recorded for the run's summary (`skips`), or 2
    with the same line under CI. SetupFailed is 2 ("SETUP FAILED: ...");
    CheckFailed, TimeLimitExceeded, any of `failures` and an unexpected error
    (a bug, an answer of an unexpected shape) are 1 ("FAILED: ...", `failed`
    naming it); SIGINT or SIGTERM is 128 + the signal (130 for Ctrl-C), as a
    shell reports it. Either signal unwinds `work` so that every finally
    clause stops its processes, and `clean_up` runs whatever happened, with
    both ignored.
    """
    failed_checks: tuple[type[Exception], ...] = (CheckFailed, TimeLimitExceeded, *failures)
    skips.forget()
    previous = {signum: signal.signal(signum, _interrupt) for signum in _STOP_SIGNALS}
    checked = False
    try:
        status = work()
        checked = status == 0
        return status
    except Unavailable as missing:
        return _skip(missing)
    except SetupFailed as problem:
        log(f"SETUP FAILED: {problem}")
        return 2
    except failed_checks as failure:
        log(f"{failed}: {failure}")
        return 1
    except Interrupted as interruption:
        log(f"interrupted ({interruption})")
        return 128 + interruption.signum
    except Exception:
        log(f"{failed} with an unexpected error:\n{traceback.format_exc()}")
        return 1
    finally:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            clean_up()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if checked and passed:
            log(passed)


def _skip(missing: Unavailable) -> int:
    """The script cannot run here: 0 with the line that says why, or 2 under CI."""
    reason = str(missing)
    if skips.in_ci():
        log(f"SETUP FAILED: {skips.line(reason, failed=True)}")
        return 2
    log(skips.line(reason, failed=False))
    skips.record(reason)
    return 0
