"""Idempotency keys: what a client's key means, and how a payload is recognised.

A POST may carry ``Idempotency-Key`` (IETF httpapi draft): a Structured Field
string (``"abc"``) or, as Stripe-style clients send it, a bare token. The
same key with the same payload is applied once, however often and through
whichever instance it arrives; the same key with another payload is refused.

The payload's fingerprint is a hash of what the *parsed* batch means, not
of how anything stores it: per sensor, in sorted order, its id, the number
of measurements, their exact sum written as a decimal (every finite double
is a dyadic rational, whose decimal expansion is finite), and the latest
timestamp's instant and original text (`canonical_form`). Whitespace, key
order and the order of items do not change it, and neither does a change of
the statistics record (`Stats.encode`): a keyed retry that crosses a rolling
upgrade of the record keeps its fingerprint. Two payloads with the same
fingerprint have exactly the same effect on every sensor, so answering one
as the replay of the other can never make a statistic differ from what the
client meant. `tests/unit/core/test_idempotency.py` pins the digest of a
literal batch: changing the canonical form changes every fingerprint, and
every keyed retry across that upgrade would be refused with 422.

How a store remembers a key and its fingerprint is the store's design: the
embedded one in a dict, the etcd one in markers (`store/etcd/keyed.py`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sensorstats.core.stats import Stats

MAX_KEY_LENGTH = 255
# How long a key is remembered by default; kube/README.md, "Capacity", has
# what a window costs in etcd.
DEFAULT_WINDOW_SECONDS = 600
# RFC 8941 sf-string contents: printable ASCII, with \" and \\ escapes.
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
# A bare key: printable ASCII without spaces, quotes or backslashes.
_BARE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class InvalidIdempotencyKey(Exception):
    """The Idempotency-Key header is not a key this service accepts."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class IdempotencyKeyReused(Exception):
    """The key was already used with another payload; nothing of this one was stored."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's key within its scope, and the fingerprint of the payload it came with."""

    scope: str  # the client identity when tokens are configured, else ""
    key: str
    fingerprint: str  # hex

    @property
    def digest(self) -> str:
        """A short, printable name for (scope, key), for storage keys."""
        return hashlib.sha256(f"{self.scope}\0{self.key}".encode()).hexdigest()[:32]


def parse_key_header(value: str) -> str:
    """The key a header value names; raises InvalidIdempotencyKey."""
    text = value.strip(" \t")
    quoted = _SF_STRING.fullmatch(text)
    if quoted:
        key = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _BARE_TOKEN.fullmatch(text):
        key = text
    else:
        raise InvalidIdempotencyKey(
            'Idempotency-Key must be a Structured Field string ("...") or a token of '
            "printable ASCII characters"
        )
    if not key:
        raise InvalidIdempotencyKey("Idempotency-Key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters, got {len(key)}"
        )
    return key


def fingerprint(deltas: Mapping[str, Stats]) -> str:
    """The fingerprint of a parsed batch: the same for batches with the same effect."""
    return hashlib.sha256(canonical_form(deltas)).hexdigest()[:32]


def canonical_form(deltas: Mapping[str, Stats]) -> bytes:
    """What a parsed batch does, as bytes that depend on nothing else.

    A JSON array, sorted by sensor id, of ``[id, count, "exact sum",
    latest instant, "latest text"]`` for every sensor with measurements; the
    instant in microseconds on a proleptic UTC scale (`Timestamp.instant`).
    ASCII only: any other character, an unpaired surrogate included, is a
    ``\\u`` escape.
    """
    rows = []
    for sensor in sorted(deltas):
        delta = deltas[sensor]
        if not delta.count:
            continue
        assert delta.latest is not None
        rows.append(
            [
                sensor,
                delta.count,
                exact_decimal(delta.mantissa, delta.exponent),
                delta.latest.instant,
                delta.latest.text,
            ]
        )
    return json.dumps(rows, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def exact_decimal(mantissa: int, exponent: int) -> str:
    """``mantissa * 2**exponent`` exactly, as a decimal without superfluous zeros.

    ``m / 2**k`` is ``m * 5**k / 10**k``: k digits after the point, the last
    of them not zero when m is odd (as `Stats` keeps it).
    """
    if exponent >= 0:
        return str(mantissa << exponent)
    places = -exponent
    digits = str(abs(mantissa) * 5**places).rjust(places + 1, "0")
    whole, fraction = digits[:-places], digits[-places:].rstrip("0")
    sign = "-" if mantissa < 0 else ""
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"
