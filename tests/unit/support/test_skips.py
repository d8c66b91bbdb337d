"""A skip's one line, its record under tox, and the summary the run ends with."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.support import skips
from tests.support.harness import CheckFailed, run_script
from tests.support.skips import Unavailable

ROOT = Path(__file__).resolve().parents[3]
HAPROXY = Unavailable("haproxy", "apt-get install haproxy")
DOCKER = Unavailable("Docker", "apt-get install docker.io, or a running engine via DOCKER_HOST")


@pytest.fixture
def tox_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test as if tox ran it in `rehearsal`, outside CI: the folder of the records."""
    monkeypatch.setenv("TOX_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("TOX_ENV_NAME", "rehearsal")
    monkeypatch.delenv("CI", raising=False)
    folder = skips.records()
    assert folder is not None
    return folder


def test_the_line_names_the_environment_and_what_to_install() -> None:
    environ = {"TOX_ENV_NAME": "image"}
    assert skips.line(str(DOCKER), failed=False, environ=environ) == (
        "image: skipped, needs Docker"
        " (apt-get install docker.io, or a running engine via DOCKER_HOST)"
    )
    assert skips.line(str(HAPROXY), failed=True, environ={"TOX_ENV_NAME": "rehearsal"}) == (
        "rehearsal: FAILED under CI, needs haproxy (apt-get install haproxy)"
    )


@pytest.mark.parametrize(("value", "ci"), [("true", True), ("1", True), ("", False), (None, False)])
def test_ci_is_the_variable_set_and_not_empty(value: str | None, ci: bool) -> None:
    assert skips.in_ci({} if value is None else {"CI": value}) is ci


def test_a_tool_that_lacks_a_program_skips_with_exit_0_and_one_line(
    tox_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def work() -> int:
        raise HAPROXY

    assert run_script(work, passed="rehearsal passed") == 0
    output = capsys.readouterr().out
    assert output.splitlines()[-1].endswith(
        "] rehearsal: skipped, needs haproxy (apt-get install haproxy)"
    )
    assert "passed" not in output
    assert skips.summary(tox_run) == (
        "skipped: rehearsal\n  rehearsal: needs haproxy (apt-get install haproxy)"
    )


def test_under_ci_the_same_line_fails_the_script(
    tox_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CI", "true")

    def work() -> int:
        raise HAPROXY

    assert run_script(work) == 2
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith(
            "] SETUP FAILED: rehearsal: FAILED under CI, needs haproxy (apt-get install haproxy)"
        )
    )
    assert skips.summary(tox_run) == "nothing skipped"


def test_an_environment_that_runs_again_forgets_its_earlier_skip(tox_run: Path) -> None:
    skips.record(str(HAPROXY))
    assert run_script(lambda: 0) == 0
    assert skips.summary(tox_run) == "nothing skipped"


def test_a_failure_is_no_skip(tox_run: Path) -> None:
    def work() -> int:
        raise CheckFailed("wrong answer")

    assert run_script(work) == 1
    assert skips.summary(tox_run) == "nothing skipped"


def test_the_summary_names_every_skipped_environment_and_counts_skipped_tests(
    tox_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skips.record(str(HAPROXY))
    monkeypatch.setenv("TOX_ENV_NAME", "py")
    promtool = "needs promtool (apt-get install prometheus)"
    for _ in range(3):
        skips.record(promtool, in_part=True)
    monkeypatch.setenv("TOX_ENV_NAME", "image")
    skips.record(str(DOCKER))
    assert skips.summary(tox_run).splitlines() == [
        "skipped: image, py, rehearsal",
        f"  image: {DOCKER}",
        f"  py: 3 tests, {promtool}",
        "  rehearsal: needs haproxy (apt-get install haproxy)",
    ]
    skips.clear(tox_run)
    assert skips.summary(tox_run) == "nothing skipped"


def test_outside_tox_nothing_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOX_WORK_DIR", raising=False)
    assert skips.records() is None
    skips.record(str(HAPROXY))  # nowhere to write: no error either


def test_a_test_that_lacks_a_program_skips_and_is_recorded(tox_run: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="needs promtool"):
        missing("needs promtool (apt-get install prometheus)")
    assert skips.summary(tox_run).splitlines()[1] == (
        "  rehearsal: 1 test, needs promtool (apt-get install prometheus)"
    )


def test_under_ci_a_test_that_lacks_a_program_fails(
    tox_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs promtool"):
        missing("needs promtool (apt-get install prometheus)")
    assert skips.summary(tox_run) == "nothing skipped"


def test_the_records_live_apart_from_every_tox_environment(tmp_path: Path) -> None:
    """Each tox environment has its folder in the work directory, `skipped` too."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    names = {section.removeprefix("testenv:") for section in tox if section.startswith("testenv:")}
    assert "skipped" in names
    for name in names:
        (tmp_path / name / "bin").mkdir(parents=True)  # as tox makes them
    environ = {"TOX_WORK_DIR": str(tmp_path), "TOX_ENV_NAME": "rehearsal"}
    skips.record(str(HAPROXY), environ=environ)
    folder = skips.records(environ)
    assert folder is not None
    assert skips.summary(folder) == (
        "skipped: rehearsal\n  rehearsal: needs haproxy (apt-get install haproxy)"
    )
    skips.clear(folder)
    assert all((tmp_path / name / "bin").is_dir() for name in names)
