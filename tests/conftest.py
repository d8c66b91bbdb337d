"""Shared fixtures: a real etcd for the session, and the stores the contract suite runs on."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import hypothesis
import pytest

from sensorstats.store import Store
from sensorstats.store.memory import MemoryStore
from tests.etcd_process import (
    EtcdProcess,
    EtcdUnavailableForTests,
    etcd_binary,
    etcd_settings,
    start_etcd,
)

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
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")


def missing(what: str) -> NoReturn:
    """Skip locally, but fail in CI: a check that silently does not run is no check."""
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


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
