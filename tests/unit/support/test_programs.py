"""The system-program policy: present, installed as root on Debian or Ubuntu, else named."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.harness import SetupFailed
from tests.support.programs import Machine, apt_based, ensure_program, ensure_programs, obtain
from tests.support.skips import Unavailable

# What each Debian package puts on PATH, for the fake apt-get.
PACKAGES = {"haproxy": ["haproxy"], "prometheus": ["prometheus", "promtool"], "wrk": ["wrk"]}


class FakeMachine:
    """Programs on a fake PATH, and an apt-get that puts a package's programs there."""

    def __init__(self, present: Sequence[str] = (), broken: Sequence[str] = ()) -> None:
        self.path = {program: f"/usr/bin/{program}" for program in present}
        self.broken = set(broken)  # packages that install without their programs
        self.installed: list[list[str]] = []

    def which(self, program: str) -> str | None:
        return self.path.get(program)

    def install(self, packages: Sequence[str]) -> None:
        self.installed.append(list(packages))
        for package in packages:
            if package not in self.broken:
                self.path.update({p: f"/usr/bin/{p}" for p in PACKAGES[package]})

    def machine(self, *, root: bool, apt: bool) -> Machine:
        return Machine(which=self.which, root=root, apt=apt, install=self.install)


@pytest.mark.parametrize(
    ("root", "apt"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_a_present_program_is_used_as_it_is(root: bool, apt: bool) -> None:
    fake = FakeMachine(present=["haproxy"])
    assert ensure_program("haproxy", machine=fake.machine(root=root, apt=apt)) == "/usr/bin/haproxy"
    assert fake.installed == []


def test_root_on_debian_or_ubuntu_installs_the_missing_package_once() -> None:
    fake = FakeMachine(present=["wrk"])
    programs = {"prometheus": "prometheus", "promtool": "prometheus", "wrk": "wrk"}
    found = ensure_programs(programs, machine=fake.machine(root=True, apt=True))
    assert found == {p: f"/usr/bin/{p}" for p in ("prometheus", "promtool", "wrk")}
    assert fake.installed == [["prometheus"]]


def test_without_root_a_missing_program_is_named_with_its_package() -> None:
    fake = FakeMachine()
    with pytest.raises(Unavailable) as raised:
        ensure_program("haproxy", machine=fake.machine(root=False, apt=True))
    assert str(raised.value) == "needs haproxy (apt-get install haproxy)"
    assert fake.installed == []


def test_root_elsewhere_than_debian_or_ubuntu_installs_nothing() -> None:
    fake = FakeMachine()
    programs = {"prometheus": "prometheus", "promtool": "prometheus"}
    with pytest.raises(Unavailable) as raised:
        ensure_programs(programs, machine=fake.machine(root=True, apt=False))
    assert str(raised.value) == "needs prometheus, promtool (apt-get install prometheus)"
    assert fake.installed == []


def test_a_need_and_its_remedies_can_be_named_for_the_user() -> None:
    fake = FakeMachine()
    how = "apt-get install docker.io, or a running engine via DOCKER_HOST"
    with pytest.raises(Unavailable) as raised:
        ensure_program(
            "dockerd",
            "docker.io",
            need="Docker",
            how=how,
            machine=fake.machine(root=False, apt=True),
        )
    assert str(raised.value) == f"needs Docker ({how})"


def test_a_package_that_installs_without_the_program_fails_the_set_up() -> None:
    fake = FakeMachine(broken=["haproxy"])
    with pytest.raises(SetupFailed, match="installed haproxy, still missing: haproxy"):
        ensure_program("haproxy", machine=fake.machine(root=True, apt=True))


def test_obtain_installs_what_is_not_a_program_on_path() -> None:
    fake = FakeMachine()
    obtain(["wrk"], "a load generator", machine=fake.machine(root=True, apt=True))
    assert fake.installed == [["wrk"]]
    with pytest.raises(
        Unavailable, match=r"^needs Debian's python3 \(apt-get install python3 python3-venv\)$"
    ):
        obtain(
            ["python3", "python3-venv"],
            "Debian's python3",
            machine=fake.machine(root=False, apt=True),
        )


@pytest.mark.parametrize(
    ("os_release", "apt"),
    [
        ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', True),
        ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', True),
        ('NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n', True),
        ("ID=Debian\n", True),
        ('NAME="Fedora Linux"\nID=fedora\n', False),
        ('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n', False),
        ('NAME="Alpine Linux"\nID=alpine\n# ID=debian in a comment does not count\n', False),
    ],
)
def test_debian_ubuntu_and_their_derivatives_use_apt_get(
    tmp_path: Path, os_release: str, apt: bool
) -> None:
    path = tmp_path / "os-release"
    path.write_text(os_release)
    assert apt_based(path) is apt


def test_a_machine_without_os_release_is_not_taken_for_debian(tmp_path: Path) -> None:
    assert apt_based(tmp_path / "absent") is False
