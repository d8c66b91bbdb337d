"""System programs the tests and tools need: used, installed, or named as missing.

One policy for every program from outside Python (Docker, haproxy, wrk,
Prometheus, debootstrap, Debian's python3 with venv):

- present on PATH or in sbin: used;
- missing, running as root on Debian or Ubuntu (or a derivative, by
  /etc/os-release's ID and ID_LIKE): installed with apt-get, `apt-get update`
  first, each call bounded by `APT_TIMEOUT`;
- missing otherwise: `Unavailable`, naming what to install. The caller skips
  with that one line, or fails with it under CI (`skips`).

`Machine` is what the policy reads of the machine; the unit tests pass fakes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import SetupFailed, log, run
from tests.support.skips import Unavailable

APT_TIMEOUT = 600.0  # seconds per apt-get call, on a slow mirror
OS_RELEASE = Path("/etc/os-release")
APT_FAMILY = frozenset({"debian", "ubuntu"})


def which(program: str) -> str | None:
    """`program` on PATH or in sbin, which a non-login PATH may lack (dockerd, haproxy)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(program, path=path)


def apt_based(os_release: Path = OS_RELEASE) -> bool:
    """Whether the machine is Debian, Ubuntu or a derivative of either (its packages, apt-get)."""
    try:
        text = os_release.read_text()
    except OSError:
        return False
    fields = {}
    for entry in text.splitlines():
        key, equals, value = entry.partition("=")
        if equals:
            fields[key.strip()] = value.strip().strip("\"'").lower()
    names = {fields.get("ID", ""), *fields.get("ID_LIKE", "").split()}
    return not APT_FAMILY.isdisjoint(names)


def apt_get_install(packages: Sequence[str], timeout: float = APT_TIMEOUT) -> None:
    """apt-get update, then install `packages` without recommends (needs root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], timeout=timeout, env=env)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    run(install, timeout=timeout, env=env)


@dataclass(frozen=True)
class Machine:
    """What the policy reads of the machine it runs on, and how it installs there."""

    which: Callable[[str], str | None] = which
    root: bool = field(default_factory=lambda: os.geteuid() == 0)
    apt: bool = field(default_factory=apt_based)
    install: Callable[[Sequence[str]], None] = apt_get_install

    @property
    def can_install(self) -> bool:
        """Root on Debian or Ubuntu: missing programs come from apt-get."""
        return self.root and self.apt


def install_hint(packages: Sequence[str]) -> str:
    """What a user runs to get Debian's `packages`."""
    return f"apt-get install {' '.join(packages)}"


def obtain(
    packages: Sequence[str], need: str, how: str | None = None, machine: Machine | None = None
) -> None:
    """Install Debian's `packages` for `need` where the machine can; else Unavailable.

    `how` replaces the default hint (``apt-get install PACKAGES``) in the
    message, for a need that has other remedies than a package.
    """
    machine = machine or Machine()
    if not machine.can_install:
        raise Unavailable(need, how or install_hint(packages))
    words = " ".join(packages)
    log(f"{need} missing: apt-get update && apt-get install -y {words}")
    machine.install(packages)


def ensure_programs(
    packages: Mapping[str, str],
    *,
    need: str | None = None,
    how: str | None = None,
    machine: Machine | None = None,
) -> dict[str, str]:
    """The paths of programs, {program: Debian package}, the missing ones obtained first.

    `need` names what is missing in the message (the programs by default);
    Unavailable when the machine cannot install them, SetupFailed when
    apt-get ran and a program is still missing.
    """
    machine = machine or Machine()
    absent = sorted(program for program in packages if not machine.which(program))
    wanted = sorted({packages[program] for program in absent})
    if wanted:
        obtain(wanted, need or ", ".join(absent), how, machine)
    found = {program: machine.which(program) for program in packages}
    still = sorted(program for program, path in found.items() if path is None)
    if still:
        raise SetupFailed(f"installed {', '.join(wanted)}, still missing: {', '.join(still)}")
    return {program: path for program, path in found.items() if path is not None}


def ensure_program(
    program: str,
    package: str | None = None,
    *,
    need: str | None = None,
    how: str | None = None,
    machine: Machine | None = None,
) -> str:
    """The path of `program`, its Debian package (named alike by default) obtained if missing."""
    packages = {program: package or program}
    return ensure_programs(packages, need=need, how=how, machine=machine)[program]
