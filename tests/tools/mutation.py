"""Mutation score of the pure core under the fast tests (`tox -e mutation`, not in the default run).

For each module, mutmut (2.x: it mutates the file in place, one mutant at a
time, and restores it) runs the unit tests of that module (its mirror test
module) without etcd or processes, then this prints killed / tested per module from
mutmut's cache. The last module's cache stays (`.mutmut-cache`, ignored by git):
`mutmut results` and `mutmut show <id>` list its survivors; delete it after.

    python tests/tools/mutation.py                      # every module below
    python tests/tools/mutation.py sensorstats/core/stats.py
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".mutmut-cache"
# Module: the tests that must kill its mutants, its mirror test module (a few
# seconds, most of them start-up, per mutant).
MODULES = {
    "sensorstats/store/etcd/txn.py": "tests/unit/store/etcd/test_txn.py",
    "sensorstats/store/etcd/keyed.py": "tests/unit/store/etcd/test_keyed.py",
    "sensorstats/store/etcd/keys.py": "tests/unit/store/etcd/test_keys.py",
    "sensorstats/core/idempotency.py": "tests/unit/core/test_idempotency.py",
    "sensorstats/core/stats.py": "tests/unit/core/test_stats.py",
    "sensorstats/core/batch.py": "tests/unit/core/test_batch.py",
}


def score(module: str, tests: str, keep: bool) -> tuple[int, int, int]:
    """Killed, survived (timeouts included) and tested mutants of `module`.

    mutmut calls a mutant "suspicious" when the tests failed, but took much longer
    than the first run (on a busy machine, often): killed all the same.
    """
    CACHE.unlink(missing_ok=True)
    runner = f"{sys.executable} {Path(__file__).resolve()} --run-tests {tests}"
    subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--paths-to-mutate", module, "--runner", runner],
        cwd=ROOT,
        check=False,
    )
    with sqlite3.connect(CACHE) as db:
        rows = dict(db.execute("SELECT status, count(*) FROM Mutant GROUP BY status").fetchall())
    if not keep:
        CACHE.unlink()
    killed = rows.get("ok_killed", 0) + rows.get("ok_suspicious", 0)
    survived = rows.get("bad_survived", 0) + rows.get("bad_timeout", 0)
    return killed, survived, killed + survived


def run_tests(tests: str) -> int:
    """The runner mutmut calls: 1 for any failure, since mutmut 2 counts only exit code 1
    as killed (pytest's 2, a collection error such as a TypeError at import, would
    count as survived)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["-m", "not etcd and not process", "--hypothesis-profile=quick", tests]
    return 0 if subprocess.run(command, cwd=ROOT, check=False).returncode == 0 else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run-tests"]:
        return run_tests(argv[1])
    modules = argv or list(MODULES)
    results = {
        module: score(module, MODULES.get(module, "tests/unit"), keep=module == modules[-1])
        for module in modules
    }
    print("\nmodule | killed | survived | score")
    for module, (killed, survived, tested) in results.items():
        print(f"{module} | {killed} | {survived} | {100 * killed / max(tested, 1):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
