"""Start an etcd member the right way: as itself, into a new cluster, or as a replacement.

    python -m sensorstats.store.etcd.bootstrap --base DIR --config FILE \\
        --set POD_NAME=etcd-0 --set POD_NAMESPACE=default

Runs before etcd, in an init container of the etcd pod (the official etcd
image is distroless: no shell to run this in). It merges the base config
files (``DIR/*.json`` in name order, later files overriding earlier ones key
by key, nested blocks merged), replaces every ``$(NAME)`` given with
``--set`` in their strings, decides how this member must start, and writes
the result as an etcd ``--config-file`` (JSON, which is YAML) to ``FILE``.
etcd then reads only that file: with ``--config-file`` it ignores its flags
and environment. The base config's values keep their JSON types, which
etcd's config file requires (``quota-backend-bytes`` a number,
``auto-compaction-retention`` a string).

This is etcd's documented runtime reconfiguration ("Replace a failed
machine": remove the old member, add the new one, start it with
``initial-cluster-state: existing``), done automatically. The decision, from
what this member's data directory holds and what the other members say:

1. The data directory holds a write-ahead log (``member/wal``): start as
   itself. etcd reads its identity and the cluster from the log and ignores
   every ``initial-*`` setting; a restart loses nothing.
2. Otherwise the member starts empty, and asks the others for the member
   list: over gRPC on each member's client URL (``MemberList``), and failing
   that on its peer URL (``GET /members``, which etcd serves before it has a
   quorum, as etcd's own start-up check does). Each is tried for
   `PROBE_SECONDS`, so that a DNS record not yet published or a slow
   network is not taken for "no cluster".
3. No member answers: either a fresh install, or every member lost its data
   at once. Start ``new`` with the static ``initial-cluster``: a new, empty
   cluster. Its members agree without talking first because etcd derives a
   member's ID from its peer URLs and the cluster token alone
   (``computeMemberId`` in etcd's ``membership/member.go``), and the cluster
   ID from the member IDs.
4. This member's peer URL is listed with no client URLs, under the ID the
   static ``initial-cluster`` gives it: the initial bootstrap is still under
   way (the others are waiting for this member, or formed a quorum without
   it). Start ``new`` with the static list, which joins it. ``existing``
   would be refused here: etcd checks the cluster version, which is not
   decided before the first quorum.
5. Listed with no client URLs under another ID: an earlier run of this
   bootstrap added it (``MemberAdd``) and then the pod died before etcd
   started. Start ``existing`` with the current member list, without adding
   it again.
6. Listed with client URLs: the member published itself once, and its data
   is gone. Starting under its old ID with an empty log would break Raft's
   safety (it forgets its votes and its log), and etcd refuses to try
   ("member ... has already been bootstrapped", ``isMemberBootstrapped`` in
   ``etcdserver/cluster_util.go``). Remove that member ID, then go on as 7.
7. Not listed: add this peer URL (``MemberAdd``, a new ID), start
   ``existing`` with the member list the add returned.
8. No client URL answers, but a peer URL lists members that published
   client URLs: the cluster exists and has no quorum (two of three members
   lost at once, one left with its data, waiting). A new cluster started
   beside it would share its cluster ID (see 3) and be overrun by the old
   member's longer log. Wait, and say so, until the quorum is back.

After a remove or an add the list is read again and the decision made anew,
so a pod killed at any point of a replacement (after the remove, after the
add, before etcd wrote its log) heals on the next run. A remove or an add
needs a quorum, and etcd also refuses an add until the member it asks has
been connected to every voting member for five seconds (``mayAddMember``,
``--strict-reconfig-check``): both are retried with back-off, with a log
line each time, for as long as it takes. It takes forever only when the
quorum is really lost (case 8, or two of three members gone at once). The
way out is manual: restore a snapshot (``etcdctl snapshot restore``) or
accept an empty cluster by deleting every member's data (for the default
emptyDir, delete all the member pods at once).

Every member of the StatefulSet serves clients on the same port and scheme:
the client URL of another member is its peer URL's host with this member's
``advertise-client-urls`` scheme and port. With ``client-transport-security``
(or ``peer-``) in the config, the bootstrap talks TLS with that block's CA
and certificate, which must therefore also serve as a client certificate.

Stdlib and ``etcd3`` only: it runs before the service is configured and
imports nothing of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import etcd3
import etcd3.etcdrpc as rpc
import grpc  # type: ignore[import-untyped]

# How long each probe waits for the other members before deciding that
# there is no cluster; a DNS record of a just-started pod takes seconds.
PROBE_SECONDS = 10.0
PROBE_INTERVAL = 1.0
CALL_TIMEOUT = 3.0
# Back-off between refused or failed membership changes.
RETRY_FIRST = 1.0
RETRY_MAX = 10.0

_log = logging.getLogger("etcd-bootstrap")

Config = dict[str, Any]


class BootstrapError(Exception):
    """The base config cannot be used; nothing was written."""


@dataclass(frozen=True)
class Member:
    """One entry of etcd's member list."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]

    @property
    def published(self) -> bool:
        """Whether it ever started: etcd publishes client URLs once it has a quorum."""
        return bool(self.client_urls)


@dataclass(frozen=True)
class Listing:
    """The member list, and whether it came from a member that has a quorum to change it."""

    members: tuple[Member, ...]
    client: Any | None  # an etcd3 client that answered, None when read from a peer port


@dataclass(frozen=True)
class Start:
    """How etcd starts: the settings that go into its config file, and why."""

    state: str  # initial-cluster-state
    initial_cluster: str
    reason: str


# --- the config ----------------------------------------------------------------


def merge(base: Config, override: Mapping[str, Any]) -> Config:
    """`base` with `override`'s keys replacing its own; nested objects merged likewise."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """`value` with every ``$(NAME)`` of `variables` replaced in its strings."""
    if isinstance(value, str):
        for name, text in variables.items():
            value = value.replace(f"$({name})", text)
        return value
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    return value


def read_base(directory: Path, variables: Mapping[str, str]) -> Config:
    """The base config files of `directory`, merged in name order, variables replaced."""
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise BootstrapError(f"no *.json config in {directory}")
    config: Config = {}
    for path in paths:
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise BootstrapError(f"{path}: {error}") from None
        if not isinstance(part, dict):
            raise BootstrapError(f"{path}: not a JSON object")
        config = merge(config, part)
    config = substitute(config, variables)
    left = re.findall(r"\$\((\w+)\)", json.dumps(config))
    if left:
        raise BootstrapError(f"no --set for {', '.join(sorted(set(left)))}")
    for key in ("name", "data-dir", "initial-advertise-peer-urls", "advertise-client-urls"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise BootstrapError(f"the config has no {key!r}")
    if not isinstance(config.get("initial-cluster"), str):
        raise BootstrapError("the config has no 'initial-cluster'")
    return config


def parse_cluster(text: str) -> dict[str, list[str]]:
    """``name=url,name=url`` as etcd reads it: a name may come with several URLs."""
    cluster: dict[str, list[str]] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = entry.partition("=")
        if not sep or not name or not url:
            raise BootstrapError(f"bad initial-cluster entry {entry!r}")
        cluster.setdefault(name, []).append(url)
    return cluster


def format_cluster(members: Sequence[Member], own_name: str, own_peer_urls: Sequence[str]) -> str:
    """An ``initial-cluster`` for `members`, naming this member's entry `own_name`."""
    own = set(own_peer_urls)
    entries = []
    for member in members:
        if own & set(member.peer_urls):
            name = own_name
        else:
            # A member added but not started has no name yet; etcd matches
            # the entries of an existing cluster by peer URL, not by name.
            name = member.name or f"unstarted-{member.id:x}"
        entries += [f"{name}={url}" for url in member.peer_urls]
    return ",".join(entries)


def static_member_id(peer_urls: Sequence[str], token: str) -> int:
    """The ID etcd gives a member of a static bootstrap (``computeMemberId``, no time)."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()  # noqa: S324
    return int.from_bytes(digest[:8], "big")


def has_log(config: Config) -> bool:
    """Whether the data directory holds a member's write-ahead log (etcd's ``wal.Exist``)."""
    wal = Path(config.get("wal-dir") or Path(config["data-dir"]) / "member" / "wal")
    return wal.is_dir() and any(wal.iterdir())


def clear_partial_member(config: Config) -> None:
    """Remove a ``member/`` directory without a log: left by a crash before etcd wrote one.

    etcd would not take it for a member either, but would open its stale
    database file when joining.
    """
    member = Path(config["data-dir"]) / "member"
    if member.exists():
        _log.warning("removing %s: it holds no write-ahead log, so no member", member)
        shutil.rmtree(member)


# --- talking to the other members ------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """Where the other members are, and how to reach them."""

    client_urls: tuple[str, ...]
    peer_urls: tuple[str, ...]
    client_tls: Mapping[str, Any]
    peer_tls: Mapping[str, Any]


def peers_of(config: Config) -> Peers:
    """The other members of the static ``initial-cluster``, with this member's client port."""
    own = config["name"]
    advertised = urlsplit(config["advertise-client-urls"].split(",")[0])
    cluster = parse_cluster(config["initial-cluster"])
    peer_urls = [url for name, urls in cluster.items() if name != own for url in urls]
    client_urls = [
        f"{advertised.scheme}://{urlsplit(url).hostname}:{advertised.port}" for url in peer_urls
    ]
    return Peers(
        client_urls=tuple(client_urls),
        peer_urls=tuple(peer_urls),
        client_tls=config.get("client-transport-security") or {},
        peer_tls=config.get("peer-transport-security") or {},
    )


def _member(message: Any) -> Member:
    return Member(
        id=int(message.ID),
        name=str(message.name),
        peer_urls=tuple(message.peerURLs),
        client_urls=tuple(message.clientURLs),
    )


def _client(url: str, tls: Mapping[str, Any]) -> Any:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    return etcd3.client(
        host=parts.hostname,
        port=parts.port or 2379,
        ca_cert=tls.get("trusted-ca-file") if secure else None,
        cert_key=tls.get("key-file") if secure else None,
        cert_cert=tls.get("cert-file") if secure else None,
        timeout=CALL_TIMEOUT,
    )


def list_by_client(url: str, tls: Mapping[str, Any]) -> Listing | None:
    """The member list from the member at client `url`; None if it does not answer."""
    client = _client(url, tls)
    try:
        response = client.clusterstub.MemberList(rpc.MemberListRequest(), CALL_TIMEOUT)
    except grpc.RpcError as error:
        _log.info("no member list from %s: %s", url, _reason(error))
        client.close()
        return None
    return Listing(tuple(map(_member, response.members)), client)


def _ssl_context(tls: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.get("trusted-ca-file"))
    if tls.get("cert-file"):
        context.load_cert_chain(tls["cert-file"], tls.get("key-file"))
    return context


def list_by_peer(url: str, tls: Mapping[str, Any]) -> Listing | None:
    """The member list a member serves on its peer port, quorum or not; None if silent."""
    context = _ssl_context(tls) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(  # noqa: S310 - the URL is the config's own peer URL
            f"{url.rstrip('/')}/members", timeout=CALL_TIMEOUT, context=context
        ) as response:
            entries = json.loads(response.read())
    except (OSError, ValueError) as error:
        _log.info("no member list from peer %s: %s", url, error)
        return None
    members = tuple(
        Member(
            id=int(entry["id"], 16) if isinstance(entry["id"], str) else int(entry["id"]),
            name=str(entry.get("name") or ""),
            peer_urls=tuple(entry.get("peerURLs") or ()),
            client_urls=tuple(entry.get("clientURLs") or ()),
        )
        for entry in entries
    )
    return Listing(members, None)


def _reason(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{getattr(code, 'name', code)} {details}"


def probe(
    peers: Peers,
    *,
    seconds: float,
    interval: float = PROBE_INTERVAL,
    by_client: Callable[[str, Mapping[str, Any]], Listing | None] = list_by_client,
    by_peer: Callable[[str, Mapping[str, Any]], Listing | None] = list_by_peer,
) -> Listing | None:
    """A member list from any other member, tried for `seconds`; None if none answers.

    A client URL's answer is preferred: only such a member can change the
    membership. A peer URL's answer is kept in case no client URL answers
    by the end.
    """
    if not peers.client_urls:
        return None
    deadline = time.monotonic() + seconds
    from_peer: Listing | None = None
    while True:
        for url in peers.client_urls:
            listing = by_client(url, peers.client_tls)
            if listing is not None:
                return listing
        for url in peers.peer_urls:
            from_peer = by_peer(url, peers.peer_tls) or from_peer
        if time.monotonic() + interval > deadline:
            return from_peer
        time.sleep(interval)


# --- the decision ----------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A membership change to make before etcd can start: remove `remove`, or add."""

    remove: int | None
    reason: str


def decide(config: Config, listing: Listing | None) -> Start | Change | None:
    """What to do next for an empty data directory, from `listing` (see the module docstring).

    None: wait, the cluster has no quorum.
    """
    name = config["name"]
    own_urls = config["initial-advertise-peer-urls"].split(",")
    static = config["initial-cluster"]
    if listing is None:
        return Start("new", static, "no other member answers: a new cluster")
    mine = [m for m in listing.members if set(own_urls) & set(m.peer_urls)]
    if mine and not mine[0].published:
        token = config.get("initial-cluster-token", "etcd-cluster")
        if mine[0].id == static_member_id(own_urls, token):
            return Start("new", static, "joining the cluster's initial bootstrap")
        current = format_cluster(listing.members, name, own_urls)
        return Start("existing", current, f"added as {mine[0].id:x} before, not started yet")
    if listing.client is None:
        # Only a peer port answers: members exist but none has a quorum to
        # change the membership with (case 8), or a bootstrap of others
        # that does not name this member. Nothing can be done safely now.
        return None
    if mine:
        return Change(mine[0].id, f"member {mine[0].id:x} ran here before and its data is gone")
    return Change(None, "not a member of the running cluster")


def change(listing: Listing, step: Change, own_urls: Sequence[str]) -> tuple[Member, ...]:
    """Make `step` through the member that answered; the member list after an add."""
    client = listing.client
    assert client is not None
    if step.remove is not None:
        _log.info("removing member %x: %s", step.remove, step.reason)
        try:
            client.clusterstub.MemberRemove(rpc.MemberRemoveRequest(ID=step.remove), CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            _log.info("member %x was removed already", step.remove)
        return ()
    _log.info("adding this member (%s): %s", ",".join(own_urls), step.reason)
    request = rpc.MemberAddRequest(peerURLs=list(own_urls))
    response = client.clusterstub.MemberAdd(request, CALL_TIMEOUT)
    _log.info("added as member %x", response.member.ID)
    return tuple(map(_member, response.members))


def plan(
    config: Config,
    *,
    probe_seconds: float,
    list_members: Callable[[Peers, float], Listing | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Start:
    """Decide how etcd starts, changing the membership first where needed."""
    if has_log(config):
        return Start(
            config.get("initial-cluster-state", "new"),
            config["initial-cluster"],
            "the data directory holds this member's log: starting as itself",
        )
    clear_partial_member(config)
    peers = peers_of(config)
    own_urls = config["initial-advertise-peer-urls"].split(",")

    def default_list(peers: Peers, seconds: float) -> Listing | None:
        return probe(peers, seconds=seconds)

    list_members = list_members or default_list
    delay = RETRY_FIRST
    while True:
        listing = list_members(peers, probe_seconds)
        try:
            step = decide(config, listing)
            if isinstance(step, Start):
                return step
            if step is None:
                _log.warning(
                    "the cluster exists but no member serves clients (no quorum): not "
                    "starting a second cluster beside it; asking again in %.0f s",
                    delay,
                )
            else:
                assert listing is not None
                members = change(listing, step, own_urls)
                if members:
                    current = format_cluster(members, config["name"], own_urls)
                    return Start("existing", current, "added as a new member")
                continue  # removed: list again, then add
        except grpc.RpcError as error:
            _log.warning(
                "membership change refused (%s); retrying in %.0f s", _reason(error), delay
            )
        finally:
            if listing is not None and listing.client is not None:
                listing.client.close()
        sleep(delay)
        delay = min(RETRY_MAX, delay * 2)


def write_config(config: Config, start: Start, path: Path) -> None:
    """The etcd config file: the base with the decided start, written atomically."""
    final = {
        **config,
        "initial-cluster-state": start.state,
        "initial-cluster": start.initial_cluster,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _variable(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"\w+", name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bootstrap; exit 0 once the config is written, 2 on an unusable base config."""
    parser = argparse.ArgumentParser(
        prog="python -m sensorstats.store.etcd.bootstrap",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--base", type=Path, required=True, help="directory of *.json configs")
    parser.add_argument("--config", type=Path, required=True, help="the etcd config to write")
    parser.add_argument("--set", type=_variable, action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--probe-seconds", type=float, default=PROBE_SECONDS)
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s etcd-bootstrap %(message)s", stream=sys.stderr
    )
    try:
        config = read_base(options.base, dict(options.set))
    except BootstrapError as error:
        _log.error("%s", error)
        return 2
    start = plan(config, probe_seconds=options.probe_seconds)
    write_config(config, start, options.config)
    _log.info(
        "%s: initial-cluster-state %s, initial-cluster %s; wrote %s",
        start.reason,
        start.state,
        start.initial_cluster,
        options.config,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
