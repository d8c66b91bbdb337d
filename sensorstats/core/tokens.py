"""Bearer tokens: the configured set, parsed and compared in constant time.

Tokens come from ``SENSORSTATS_API_TOKENS`` (comma-separated) or from
``SENSORSTATS_API_TOKENS_FILE`` (one a line, for a Kubernetes Secret mounted
as a file; re-read when it changes, so tokens rotate without a restart). An
entry is ``token`` or ``name:token``. The name, or without one a digest of
the token, is the client's identity: it scopes Idempotency-Keys and may be
logged. The token itself never leaves this module: only SHA-256 digests of
the configured tokens are kept, and no message or error here quotes one.

A presented token is hashed and compared with *every* configured digest by
`hmac.compare_digest`, without stopping at a match: the time a check takes
depends on neither which token matched, nor how much of one did, nor the
length of either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096
# How often, at most, the token file is checked for a change (one stat call).
FILE_CHECK_INTERVAL = 1.0
REALM = "sensorstats"

# RFC 6750 §2.1: the characters a bearer token may have in a header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_log = logging.getLogger(__name__)


class TokenError(ValueError):
    """Configured tokens that cannot be used; the text names the entry, never a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class Client:
    """One configured token: the identity it stands for and the digest it is known by."""

    identity: str
    digest: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Tokens:
    """An immutable set of accepted tokens; its repr shows identities only."""

    clients: tuple[Client, ...]

    def __len__(self) -> int:
        return len(self.clients)

    def identify(self, presented: str) -> str | None:
        """The identity of the client whose token `presented` is, or None."""
        digest = _digest(presented)
        found = None
        for client in self.clients:
            # Every digest is compared, match or not: no early exit.
            matches = hmac.compare_digest(digest, client.digest)
            found = client.identity if matches and found is None else found
        return found


def parse_tokens(entries: Iterable[tuple[str, str]]) -> Tokens:
    """Tokens from ``(where, text)`` entries, `where` naming each for errors ("line 3").

    Raises TokenError for a malformed entry or a token given twice.
    """
    clients: list[Client] = []
    seen: dict[bytes, str] = {}
    for where, text in entries:
        name, colon, token = text.strip().rpartition(":")
        if colon and not _NAME.fullmatch(name):
            raise TokenError(
                f"{where}: a name before ':' must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if not _B64TOKEN.fullmatch(token):
            raise TokenError(
                f"{where}: a token may hold only letters, digits and -._~+/ (then '=' padding)"
            )
        if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
            raise TokenError(
                f"{where}: a token must have {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters, "
                f"this one has {len(token)}"
            )
        digest = _digest(token)
        if digest in seen:
            raise TokenError(f"{where} repeats the token of {seen[digest]}")
        seen[digest] = where
        # Without a name, a digest of the token tells clients apart in logs and
        # idempotency scopes; it is derived apart from the comparison digest.
        identity = name or "token-" + hashlib.sha256(b"identity\0" + digest).hexdigest()[:12]
        clients.append(Client(identity, digest))
    return Tokens(tuple(clients))


def tokens_from_list(text: str) -> Tokens:
    """Tokens from a comma-separated list; an empty list is an error."""
    entries = [(f"entry {n}", item) for n, item in enumerate(text.split(","), 1)]
    for where, item in entries:
        if not item.strip():
            raise TokenError(f"{where} is empty")
    return parse_tokens(entries)


def read_tokens_file(path: str) -> Tokens:
    """Tokens from a file, one a line; blank lines and ``#`` comments are skipped.

    Raises TokenError if the file cannot be read or holds no token.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise TokenError(f"cannot read {path}: {reason}") from None
    entries = [
        (f"line {n}", line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise TokenError(f"{path} holds no token")
    return parse_tokens(entries)


_NOTHING_REPORTED = object()


class TokenSource(Protocol):
    """Where the middleware gets the tokens that are valid now."""

    def current(self) -> Tokens: ...


class StaticTokens:
    """Tokens fixed for the life of the process (``SENSORSTATS_API_TOKENS``)."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    def current(self) -> Tokens:
        return self._tokens


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        # Follows symbolic links: a Kubernetes Secret volume swaps the link
        # target on an update, which gives a new inode.
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


class TokenFile:
    """Tokens from a file, re-read when its inode, size or mtime change.

    At most one ``stat`` per `check_interval` seconds, by whichever request
    comes first. A file that turns unreadable, empty or malformed is reported
    once per change and the tokens read before stay in force: a half-written
    or missing file must not lock every client out, nor let anyone in.
    """

    def __init__(
        self,
        path: str,
        *,
        check_interval: float = FILE_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._signature = _signature(path)
        self._tokens = read_tokens_file(path)
        self._next_check = clock() + check_interval
        # The state of the file last reported as unusable (None is "missing").
        self._reported: object = _NOTHING_REPORTED

    def current(self) -> Tokens:
        now = self._clock()
        with self._lock:
            if now < self._next_check:
                return self._tokens
            # Claimed under the lock: the other threads keep the tokens in
            # force while this one looks at the file.
            self._next_check = now + self._interval
            known = self._signature
        signature = _signature(self.path)
        if signature == known:
            return self._tokens
        try:
            tokens = read_tokens_file(self.path)
        except TokenError as error:
            if signature != self._reported:
                self._reported = signature
                _log.error("token file: %s; the tokens read before stay in force", error)
            return self._tokens
        with self._lock:
            self._tokens = tokens
            self._signature = signature
        _log.info("token file %s re-read: %d token(s)", self.path, len(tokens))
        return tokens
