"""Checks this machine cannot run: the one line that says so, and the run's record of them.

A check that needs something the machine lacks and cannot install (a system
program, Debian's python3) raises `Unavailable`, whose message names what to
install. A tool then skips its whole tox environment with exit status 0 and a
pytest test skips itself, each with one line: ``rehearsal: skipped, needs
haproxy (apt-get install haproxy)``. Under CI (`CI` set and not empty) the same
line fails the run instead: a check that silently does not run is no check.

Every skip under tox is written to ``$TOX_WORK_DIR/.skips/<environment>``,
one reason a line, so that the run's last environment, `skipped`
(tests/tools/skipped.py), names them all and removes them. An environment
removes its own record as it starts (`forget`) and the first one, `lint`,
removes every record, so an earlier run's skips never show in a later one.

Stdlib only: the tools and `tox -e skipped` install nothing for it.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

# A record's reasons when only some of an environment's tests were skipped.
IN_PART = "some tests: "


class Unavailable(Exception):
    """What a check needs is missing here and cannot be installed; the message says what to do."""

    def __init__(self, need: str, how: str) -> None:
        super().__init__(f"needs {need} ({how})")
        self.need = need
        self.how = how


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this is a CI run, where a check that cannot run fails rather than skips."""
    return bool(environ.get("CI"))


def environment(environ: Mapping[str, str] = os.environ) -> str:
    """The tox environment running this, else the script's name (``rehearsal``)."""
    return environ.get("TOX_ENV_NAME") or Path(sys.argv[0]).stem


def line(reason: str, *, failed: bool, environ: Mapping[str, str] = os.environ) -> str:
    """The one line: ``image: skipped, needs Docker (...)``, or FAILED under CI."""
    verdict = "FAILED under CI" if failed else "skipped"
    return f"{environment(environ)}: {verdict}, {reason}"


def records(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder of the run's skip records: under tox's work directory, none outside tox."""
    work_dir = environ.get("TOX_WORK_DIR")
    # Beside the environments' folders, `skipped`'s among them.
    return Path(work_dir) / ".skips" if work_dir else None


def record(reason: str, *, in_part: bool = False, environ: Mapping[str, str] = os.environ) -> None:
    """Note that this environment, or `in_part` some of its tests, skipped for `reason`."""
    folder = records(environ)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / environment(environ), "a") as file:
        file.write(f"{IN_PART if in_part else ''}{reason}\n")


def forget(environ: Mapping[str, str] = os.environ) -> None:
    """Remove this environment's record: it is starting again, its old skips no longer hold."""
    folder = records(environ)
    if folder is not None:
        (folder / environment(environ)).unlink(missing_ok=True)


def clear(folder: Path) -> None:
    """Remove every record in `folder`."""
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def summary(folder: Path) -> str:
    """What the records in `folder` name: ``skipped: image, rehearsal`` and a line for each.

    The same reason from many tests of one environment is one line with its count.
    """
    paths = sorted(folder.iterdir()) if folder.is_dir() else []
    if not paths:
        return "nothing skipped"
    lines = [f"skipped: {', '.join(path.name for path in paths)}"]
    for path in paths:
        for reason, count in Counter(path.read_text().splitlines()).items():
            if reason.startswith(IN_PART):
                tests = "1 test" if count == 1 else f"{count} tests"
                lines.append(f"  {path.name}: {tests}, {reason.removeprefix(IN_PART)}")
            else:
                lines.append(f"  {path.name}: {reason}")
    return "\n".join(lines)
