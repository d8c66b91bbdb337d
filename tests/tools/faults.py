"""The fault suite: exactly-once under faults, and etcd's space under sustained load.

    python tests/tools/faults.py [--only faults|soak] [--seed N]

**Faults.** Three etcd members on loopback and two ``python -m sensorstats``
instances: ``a`` talks to the members directly, ``b`` through one loopback
TCP proxy per member (`tests/tools/tcp_proxy.py`) that this script controls.
Writer threads post batches, each with a fresh ``Idempotency-Key``, and
retry every failure (connection errors, 5xx, timeouts) with the same key and
payload, alternating instances, until it is acknowledged; ``a`` runs with
the default ``SENSORSTATS_ETCD_MAX_TXN_OPS`` (128) and ``b`` with 48, so a
retry through the other instance is split into other transactions; some
batches touch 130 to 260 sensors, so the service splits them into several,
and some are sent to both instances at once (a hedged request: concurrent
duplicates). Reader threads read statistics meanwhile. A nemesis, in turn:
SIGKILLs the etcd leader and restarts it; SIGSTOPs the (new) leader for
several seconds; SIGKILLs instance ``a`` while requests are in flight and
restarts it on the same port; cuts ``b`` from etcd (connections reset and
refused) and later stalls its connections (nothing forwarded, nothing closed,
the stalled bytes delivered late), each for several seconds.

Then, with everything healed and every unacknowledged batch retried once
more, the checker (as Jepsen's counter checker) requires, on both instances:
every sensor's count is exactly the number of distinct measurements sent to
it, its mean is exact (the `Fraction` oracle) and its last measurement is the
latest sent; and every read taken during the run lay between what had been
acknowledged before it started and what had been attempted by the time it
ended (when it sits at either bound, its mean and last measurement must be
those of that set). It prints the history's figures.

**Space soak.** One etcd member with a small quota and compaction scaled to
it; one instance. wrk first posts unkeyed, then keyed one-measurement POSTs
to measure the bytes etcd's database grows per POST (history, until
compaction) and keeps per POST (live markers, until their lease expires);
then it posts both kinds at full rate for `SOAK_SECONDS`, sampling the
database size. The size in use must level off, with no NOSPACE alarm and no
"database space exceeded" answer.

Exit status: 0 every check passed (or wrk, which the soak needs, is missing
and cannot be installed here, outside CI: one line says so), 1 a check
failed, 2 the topology could not be set up. Every process it starts is
stopped by PID before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `python tests/tools/faults.py`
    sys.path.insert(0, str(ROOT))

from tests.support.etcd_process import etcd_binary, new_cluster  # noqa: E402
from tests.support.harness import CheckFailed, log, run_script, time_limit  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402
from tests.support.programs import ensure_program  # noqa: E402
from tests.tools.faults_checker import Violations, check_history  # noqa: E402
from tests.tools.faults_clients import READERS, WRITERS, Clients, History, final_statistics  # noqa: E402
from tests.tools.faults_processes import Instance, leader_of, member_running, now  # noqa: E402
from tests.tools.faults_soak import run_soak  # noqa: E402
from tests.tools.tcp_proxy import TcpProxy  # noqa: E402

OVERALL_TIMEOUT = 330  # seconds for both parts, a guard against hangs only
FINAL_RETRY_SECONDS = 30.0
# The nemesis: (what, seconds of fault) in order, with QUIET seconds before each.
QUIET = 3.0
KILL_LEADER_DOWN = 3.0
PAUSE_SECONDS = 5.0
INSTANCE_DOWN = 1.5
CUT_SECONDS = 5.0
STALL_SECONDS = 7.0
# Instance b's SENSORSTATS_ETCD_MAX_TXN_OPS, as during a rolling change of it.
B_MAX_TXN_OPS = 48


class Cluster:
    """The fault run's processes: etcd members, the proxies of `b`, the instances."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.members = new_cluster(directory, [f"etcd-{i}" for i in range(3)])
        self.proxies = [
            TcpProxy(member.client_port, name=f"proxy-{member.name}") for member in self.members
        ]
        port_a, port_b = free_ports(2)
        self.a = Instance("a", port_a, [m.url for m in self.members], directory)
        # Unlike a's default 128: a keyed retry through the other instance is
        # split otherwise (keyed chunks of 63 and 23 sensors, see store/etcd/keyed.py).
        self.b = Instance(
            "b",
            port_b,
            [f"http://127.0.0.1:{p.port}" for p in self.proxies],
            directory,
            SENSORSTATS_ETCD_MAX_TXN_OPS=str(B_MAX_TXN_OPS),
        )
        self.instances = [self.a, self.b]

    def start(self) -> None:
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_ready()
        for proxy in self.proxies:
            proxy.start()
        for instance in self.instances:
            instance.start()
        for instance in self.instances:
            instance.wait_ready()

    def heal(self) -> None:
        """Every member up and healthy, every proxy forwarding, every instance ready."""
        for proxy in self.proxies:
            proxy.restore()
        for member in self.members:
            if member_running(member):
                member.resume()  # in case a failure left it paused
            else:
                member.launch()
        for member in self.members:
            member.wait_ready()
        for instance in self.instances:
            if not instance.running():
                instance.start()
        for instance in self.instances:
            instance.wait_ready(failure=CheckFailed)  # etcd is back: the service must be too

    def stop(self) -> None:
        for instance in self.instances:
            with contextlib.suppress(Exception):
                instance.stop()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        for member in self.members:
            with contextlib.suppress(Exception):
                member.stop()


def nemesis(cluster: Cluster, clients: Clients) -> None:
    """The faults, one after the other, each healed before the next."""
    members = cluster.members

    time.sleep(QUIET)
    leader = leader_of(members)
    leader.kill()
    log(f"nemesis: SIGKILLed the etcd leader {leader.name}")
    time.sleep(KILL_LEADER_DOWN)
    started = now()
    leader.start()
    log(f"nemesis: restarted {leader.name}; it rejoined in {now() - started:.1f} s")

    time.sleep(QUIET)
    leader = leader_of(members)
    leader.pause()
    log(f"nemesis: SIGSTOPped the etcd leader {leader.name} for {PAUSE_SECONDS:g} s")
    time.sleep(PAUSE_SECONDS)
    leader.resume()
    for member in members:
        member.wait_ready()
    log(f"nemesis: SIGCONTed {leader.name}; cluster healthy; leader now {leader_of(members).name}")

    time.sleep(QUIET)
    victim = cluster.a
    deadline = now() + 5.0
    while clients.in_flight(victim) == 0 and now() < deadline:
        time.sleep(0.001)
    in_flight = clients.in_flight(victim)
    victim.kill()
    log(f"nemesis: SIGKILLed instance {victim.name} with {in_flight} client request(s) in flight")
    time.sleep(INSTANCE_DOWN)
    started = now()
    victim.start()
    victim.wait_ready(failure=CheckFailed)
    log(f"nemesis: restarted {victim.name} on port {victim.port}; ready in {now() - started:.1f} s")

    time.sleep(QUIET)
    cut = cluster.b
    before = sum(proxy.reset for proxy in cluster.proxies)
    for proxy in cluster.proxies:
        proxy.refuse()
    log(f"nemesis: cut instance {cut.name} from etcd (connections reset and refused)")
    time.sleep(CUT_SECONDS)
    for proxy in cluster.proxies:
        proxy.restore()
    resets = sum(proxy.reset for proxy in cluster.proxies) - before
    started = now()
    cut.wait_ready(failure=CheckFailed)
    log(
        f"nemesis: restored {cut.name}'s connections after {CUT_SECONDS:g} s ({resets} reset); "
        f"ready again in {now() - started:.1f} s"
    )

    time.sleep(QUIET)
    for proxy in cluster.proxies:
        proxy.stall()
    stalled = sum(proxy.open_connections() for proxy in cluster.proxies)
    log(
        f"nemesis: stalled {cut.name}'s {stalled} connections to etcd "
        f"(nothing forwarded, nothing closed)"
    )
    time.sleep(STALL_SECONDS)
    for proxy in cluster.proxies:
        proxy.restore()
    started = now()
    cut.wait_ready(failure=CheckFailed)
    log(
        f"nemesis: {cut.name}'s stalled bytes delivered after {STALL_SECONDS:g} s; "
        f"ready again in {now() - started:.1f} s"
    )
    time.sleep(QUIET)


def run_faults(directory: Path, seed: int, *, keys: bool = True) -> Violations:
    """The fault run; returns its violations."""
    cluster = Cluster(directory)
    history = History(seed)
    clients = Clients(cluster.instances, history, keys=keys)
    try:
        cluster.start()
        log(
            "etcd members "
            + ", ".join(f"{m.name} :{m.client_port}" for m in cluster.members)
            + f"; instance a :{cluster.a.port} direct, instance b :{cluster.b.port} through "
            + "proxies "
            + ", ".join(f":{p.port}" for p in cluster.proxies)
        )
        clients.start(seed)
        log(f"{WRITERS} writers and {READERS} readers started (seed {seed})")
        nemesis(cluster, clients)
        log("nemesis done; writers finish the batches in hand")
        clients.finish()
        cluster.heal()
        final_start = now()
        pending = clients.retry_unacknowledged(FINAL_RETRY_SECONDS)
        log(
            f"healed: every member healthy, both instances ready; retried the "
            f"{len(pending)} unacknowledged batch(es) in {now() - final_start:.1f} s"
        )
        sensors = sorted({m.sensor for op in history.writes for m in op.measurements})
        started = now()
        finals = {i.name: final_statistics(i, sensors) for i in cluster.instances}
        elapsed = now() - started
        log(f"read the final state of {len(sensors)} sensors on each instance in {elapsed:.1f} s")
        history.dump(directory / "history.jsonl")
        started = now()
        verdict = check_history(history, finals, final_start, FINAL_RETRY_SECONDS)
        log(f"checked the history in {now() - started:.1f} s")
        for line in verdict.lines:
            log(line)
        return verdict.violations
    finally:
        clients.stop_writing.set()
        clients.give_up.set()
        clients.stop_reading.set()
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["faults", "soak"], help="run one part only")
    parser.add_argument("--seed", type=int, default=None, help="the workload's random seed")
    parser.add_argument(
        "--without-keys",
        action="store_true",
        help="retry without Idempotency-Key, to see the checker catch what that counts twice",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the logs and the history after a pass too"
    )
    options = parser.parse_args(argv)
    seed = options.seed if options.seed is not None else random.randrange(1_000_000)
    directory = Path(tempfile.mkdtemp(prefix="sensorstats-faults-"))
    violations = Violations()

    def work() -> int:
        etcd_binary()
        wrk = ensure_program("wrk") if options.only != "faults" else ""
        with time_limit(OVERALL_TIMEOUT, "the fault suite"):
            if options.only != "soak":
                log(f"part 1: faults (workload seed {seed}: --seed {seed} sends the same batches)")
                faults = run_faults(directory / "faults", seed, keys=not options.without_keys)
                violations.extend(faults)
            if options.only != "faults":
                log("part 2: etcd space under sustained load")
                violations.extend(run_soak(directory / "soak", wrk))
        return 1 if violations else 0

    # Every process is stopped by the finally clause of the part that started it.
    kept = f"; logs kept in {directory}" if options.keep_logs else ""
    status = run_script(work, passed=f"fault suite passed; every process stopped{kept}")
    violations.report()
    if status == 0 and not options.keep_logs:
        shutil.rmtree(directory, ignore_errors=True)
    elif status != 0:
        log(f"fault suite FAILED (exit {status}); logs kept in {directory}")
    return status


if __name__ == "__main__":
    sys.exit(main())
