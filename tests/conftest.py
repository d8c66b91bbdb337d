"""Shared fixtures: a real etcd for the session, and the stores the contract suite runs on.

Also the `etcd` and `process` markers, set on every test that starts etcd or
`python -m sensorstats` (see tests/README.md), so that
`-m "not etcd and not process"` is the loop of a few seconds.
"""

from __future__ import annotations

import inspect
import os
import secrets
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import hypothesis
import pytest

from sensorstats.store import Store
from sensorstats.store.memory import MemoryStore
from tests.support import skips
from tests.support.etcd_process import (
    EtcdProcess,
    EtcdUnavailableForTests,
    etcd_binary,
    etcd_settings,
    start_etcd,
)
from tests.support.examples import QUICK, QUICK_EXAMPLES

# Hypothesis profiles. CI (`CI` set, as `missing` reads it) runs more
# examples, the same ones every run (derandomized: a red build is never luck
# of the draw, and no example database carries over), without a deadline or
# the too-slow check (a shared runner stalls), and prints a failing example as
# a blob that `@reproduce_failure` replays. Locally, Hypothesis's defaults.
# Both derive from "default": Hypothesis loads its own "ci" profile on import
# when it sees a CI variable, even an empty one. Tests that set their own
# settings keep them; `--hypothesis-profile` picks a profile explicitly.
_defaults = hypothesis.settings.get_profile("default")
hypothesis.settings.register_profile(
    "ci",
    _defaults,
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile("dev", _defaults, print_blob=True)
# The loop of a few seconds (`--hypothesis-profile=quick`, tests/README.md):
# every property runs, on a few examples (`tests.support.examples`).
hypothesis.settings.register_profile(QUICK, _defaults, max_examples=QUICK_EXAMPLES, print_blob=True)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")


def missing(what: str) -> NoReturn:
    """Skip locally, but fail in CI: a check that silently does not run is no check.

    A skip is recorded for the summary at the end of the tox run (`skips`).
    """
    if skips.in_ci():
        pytest.fail(what)
    skips.record(what, in_part=True)
    pytest.skip(what)


def pytest_sessionstart(session: pytest.Session) -> None:
    """This environment runs again: what an earlier run of it skipped no longer holds."""
    skips.forget()


@pytest.fixture(scope="session")
def etcd_available() -> None:
    """Fails (CI) or skips (locally) the test when the etcd binary is missing."""
    try:
        etcd_binary()
    except EtcdUnavailableForTests as error:
        missing(f"{error}; see tox.ini for the pinned test dependencies")


@pytest.fixture(scope="session")
def etcd(etcd_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd member shared by the session; tests keep apart by `etcd_prefix`.

    Tests that pause, kill or fill etcd start their own with `start_etcd`.
    """
    with start_etcd(tmp_path_factory.mktemp("etcd")) as member:
        yield member


@pytest.fixture
def own_etcd(etcd_available: None, tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd member of this test's own, to pause, kill or restart at will."""
    with start_etcd(tmp_path) as member:
        yield member


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test-{secrets.token_hex(6)}/"


@pytest.fixture(params=["memory", "etcd"])
def store(request: pytest.FixtureRequest, etcd_prefix: str) -> Iterator[Store]:
    """Each store implementation in turn, empty."""
    if request.param == "memory":
        yield MemoryStore()
        return
    from sensorstats.store.etcd.store import EtcdStore

    member = request.getfixturevalue("etcd")
    etcd_store = EtcdStore.from_settings(etcd_settings(member, prefix=etcd_prefix))
    try:
        yield etcd_store
    finally:
        etcd_store.close()


# Markers. A test is marked `etcd` or `process` when it lives in the folder of
# that kind, or when it, one of its fixtures, or a function of their own module
# that they call names a helper of tests/support/ that starts etcd or a
# `python -m sensorstats` process; and `etcd` on the `store` fixture's etcd turn.
TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"integration": "etcd", "e2e": "process"}
STARTERS = {
    "etcd": frozenset({"start_etcd", "start_cluster", "new_cluster", "start_tls_etcd"}),
    "process": frozenset({"start_service", "run_module"}),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests that start etcd or sensorstats processes (tests/README.md)."""
    for item in items:
        markers = set()
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKERS:
            markers.add(FOLDER_MARKERS[folder])
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store") == "etcd":
            markers.add("etcd")
        functions = _functions_of(item)
        for marker, helpers in STARTERS.items():
            seen: set[types.CodeType] = set()
            if any(_reaches(function, helpers, seen) for function in functions):
                markers.add(marker)
        for marker in sorted(markers):
            item.add_marker(marker)


def _functions_of(item: pytest.Item) -> list[Callable[..., Any]]:
    """The test function and every fixture it uses, directly or not, as it sees them."""
    functions = [item.function] if isinstance(item, pytest.Function) else []
    # pytest offers no public view of an item's fixture closure; plugins read this one.
    info = getattr(item, "_fixtureinfo", None)
    for definitions in info.name2fixturedefs.values() if info else ():
        if definitions:  # the last definition is the one in force (overrides come last)
            functions.append(definitions[-1].func)
    return functions


def _reaches(
    function: Callable[..., Any], helpers: frozenset[str], seen: set[types.CodeType]
) -> bool:
    """Whether `function`, or a function of its own module that it calls, names one of `helpers`."""
    function = inspect.unwrap(function)
    hypothesis_test = getattr(function, "hypothesis", None)  # @given keeps the test here
    function = getattr(hypothesis_test, "inner_test", function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names = _names(code)
    if names & helpers:
        return True
    module = function.__globals__
    return any(
        _reaches(module[name], helpers, seen)
        for name in names
        if inspect.isfunction(module.get(name)) and module[name].__module__ == function.__module__
    )


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names that code uses, its nested functions' included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names
