"""Per-sensor statistics as an exact, mergeable value.

Every finite double, and every integer a JSON number can carry here, is a
dyadic rational: ``m * 2**e`` with integers ``m`` and ``e``. Sums of dyadic
rationals are dyadic rationals, so the sum of all measurements is kept exactly
as one such pair, normalised so that ``m`` is odd (or the pair is ``(0, 0)``).
Integer addition is associative and commutative, hence so is `Stats.merge`,
bit for bit: the state never depends on arrival order or batching. The mean is
computed once, as one correctly rounded integer division: it equals
``float(sum(map(Fraction, values)) / len(values))``, and ``1.7e308`` twice
averages to ``1.7e308`` without overflow. A JSON integer is summed as the
integer it is (``2**53 + 1`` is not rounded first), as long as it is finite
as a double.

The pair stays small: ``e >= -1074`` (the smallest subnormal) and
``|m * 2**e| < count * 2**1024``, so ``m`` has at most about 2,100 bits plus
``log2(count)`` whatever the values; for everyday readings it has 50 to 60.
The stored record (`Stats.encode`) is 50 to 70 bytes of JSON for everyday
readings, about 560 in the worst case.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from itertools import repeat

from sensorstats.core.timestamps import MAX_TIMESTAMP_LENGTH, UNPAIRED_SURROGATE, parse_datetime

# The record version this release writes, and the ones it reads. A change of
# the record is rolled out in two releases (kube/README.md, "Rolling
# upgrades"): the first reads the new version as well and still writes this
# one; only the next writes the new one, once no instance is left that
# cannot read it.
_ENCODING_VERSION = 1
_READABLE_VERSIONS = frozenset({1})
_MICROSECONDS_PER_DAY = 86_400_000_000
_ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """A posted timestamp: its instant (for ordering) and its original text.

    Ordering is by instant, then by text, so equal instants written
    differently (``Z`` and ``+00:00``) resolve to the same winner whatever
    the order in which they arrive.
    """

    instant: int  # microseconds on a proleptic UTC scale; only ever compared
    text: str

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """Parse a timestamp by `TIMESTAMP_RULES`; naive is UTC.

        Raises ValueError for anything else, including over-long strings.
        """
        return cls(instant_of(text), text)


def instant_of(text: str) -> int:
    """The instant of a timestamp, in microseconds on a proleptic UTC scale.

    Accepts what `parse_datetime` accepts (`TIMESTAMP_RULES`); a timestamp
    without an offset is UTC. Raises ValueError.
    """
    moment = parse_datetime(text)
    local = (
        moment.toordinal() * _MICROSECONDS_PER_DAY
        + ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1_000_000
        + moment.microsecond
    )
    zone = moment.tzinfo
    if zone is None:
        return local
    offset = _offsets.get(zone)
    if offset is None:
        offset = moment.utcoffset() // _ONE_MICROSECOND  # type: ignore[operator]
        if len(_offsets) < 1024:
            _offsets[zone] = offset
    return local - offset


# Microseconds east of UTC per zone seen; computing an offset is the slow part
# of parsing, and a batch uses few distinct offsets.
_offsets: dict[tzinfo, int] = {}

_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
# Layouts (digits written as 0) whose fields have fixed widths and come most
# significant first. A digit may stand anywhere `fromisoformat` takes any
# separator ("2021-11-09712:00"), so the layout must place every digit.
_TEXT_ORDERED_LAYOUT = re.compile(rb"0000-00-00(?:[T ]00:00(?::00(?:[.,]0+)?)?)?(?:Z|[+-]00:00)?")
_TZINFO = operator.attrgetter("tzinfo")


def order_as_text(texts: Collection[str]) -> bool:
    """Whether `texts`, all timestamps, compare as texts as their `Timestamp`s do.

    Raises ValueError unless `instant_of` accepts every text, with its
    message for the first it refuses. True when all
    are ASCII, share one layout from `_TEXT_ORDERED_LAYOUT` and one UTC offset:
    the first differing character is then the first differing field, and a
    greater field never means an earlier instant (digits beyond microseconds
    are dropped, and then the greater text wins the tie, as in `Timestamp`).
    So the latest of such timestamps is the greatest text, and only that one
    needs `instant_of`: checking a text this way costs a fraction of it.
    """
    ascii = all(map(str.isascii, texts))
    plain = max(map(len, texts), default=0) <= MAX_TIMESTAMP_LENGTH and (
        ascii or not any(map(UNPAIRED_SURROGATE.search, texts))
    )
    try:
        zones = set(map(_TZINFO, map(datetime.fromisoformat, texts))) if plain else None
    except ValueError:
        zones = None
    if zones is None:
        # One is refused, or written as only `parse_datetime` reads it (a
        # lowercase z): the slower way, which raises with its words.
        zones = set(map(_TZINFO, map(parse_datetime, texts)))
    if len(texts) < 2:
        return True
    if not ascii or len(zones) > 1:
        return False
    layouts = set(map(bytes.translate, map(str.encode, texts), repeat(_DIGITS_AS_ZERO)))
    return len(layouts) <= 1 and all(map(_TEXT_ORDERED_LAYOUT.fullmatch, layouts))


def _normalise(mantissa: int, exponent: int) -> tuple[int, int]:
    """The canonical pair for ``mantissa * 2**exponent``: odd mantissa or (0, 0)."""
    if mantissa == 0:
        return 0, 0
    trailing_zeros = (mantissa & -mantissa).bit_length() - 1
    return mantissa >> trailing_zeros, exponent + trailing_zeros


def exact_sum(values: list[float | int]) -> tuple[int, int]:
    """The exact sum of `values` as a normalised ``(mantissa, exponent)`` pair.

    Each value contributes its exact ratio ``n / 2**k``; numerators are
    summed per denominator (there are few distinct ones), then brought to the
    largest denominator once. No `Fraction` is built per value.
    """
    by_denominator: dict[int, int] = {}
    for value in values:
        numerator, denominator = value.as_integer_ratio()
        by_denominator[denominator] = by_denominator.get(denominator, 0) + numerator
    if not by_denominator:
        return 0, 0
    common = max(by_denominator)
    total = sum(n * (common // d) for d, n in by_denominator.items())
    return _normalise(total, 1 - common.bit_length())


# Rounds of `exact_double_sum` before it leaves the values to `exact_sum`.
# Everyday readings settle in two or three; each round settles about 53 more bits.
_MAX_SUM_ROUNDS = 6


def exact_double_sum(values: list[float | int]) -> tuple[int, int]:
    """`exact_sum` of finite doubles (or integers a double holds exactly), faster.

    `math.fsum` rounds the exact sum of its inputs correctly, so feeding it
    the inputs together with the negated results so far yields the exact
    remainder, rounded: the sum is the few doubles obtained until it is zero
    (a non-zero multiple of 2**-1074 never rounds to zero). Each round runs
    over the values in C instead of one `as_integer_ratio` per value in
    Python. Sums beyond the double range, where `fsum` overflows, and sums
    needing many rounds are left to `exact_sum`; the result is the same.
    """
    terms = list(values)
    mantissa = exponent = 0  # the sum of the parts found so far
    for _ in range(_MAX_SUM_ROUNDS):
        try:
            remainder = math.fsum(terms)
        except OverflowError:
            break
        if remainder == 0:
            return _normalise(mantissa, exponent)
        terms.append(-remainder)
        numerator, denominator = remainder.as_integer_ratio()
        power = 1 - denominator.bit_length()  # remainder == numerator * 2**power
        if power < exponent:
            mantissa = (mantissa << (exponent - power)) + numerator
            exponent = power
        else:
            mantissa += numerator << (power - exponent)
    return exact_sum(values)


@dataclass(frozen=True, slots=True)
class Stats:
    """Count, exact sum and latest timestamp of a sensor's measurements."""

    count: int = 0
    mantissa: int = 0  # the sum is exactly mantissa * 2**exponent
    exponent: int = 0
    latest: Timestamp | None = None

    @classmethod
    def of(cls, values: list[float | int], latest: Timestamp) -> Stats:
        """Statistics of a non-empty list of values whose latest timestamp is known."""
        mantissa, exponent = exact_sum(values)
        return cls(len(values), mantissa, exponent, latest)

    def merge(self, other: Stats) -> Stats:
        """The statistics of both sets of measurements together (exact, symmetric)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        exponent = min(self.exponent, other.exponent)
        mantissa = (self.mantissa << (self.exponent - exponent)) + (
            other.mantissa << (other.exponent - exponent)
        )
        assert self.latest is not None
        assert other.latest is not None
        return Stats(
            self.count + other.count,
            *_normalise(mantissa, exponent),
            max(self.latest, other.latest),
        )

    @property
    def mean(self) -> float:
        """The mean, rounded once to the nearest double; 0.0 when empty."""
        if self.count == 0:
            return 0.0
        # int / int is correctly rounded in CPython, and the mean of finite
        # doubles is itself within the double range, so this cannot overflow.
        if self.exponent >= 0:
            return (self.mantissa << self.exponent) / self.count
        return self.mantissa / (self.count << -self.exponent)

    def as_json(self) -> dict[str, object]:
        """The public representation served by ``GET /statistics/{id}``."""
        return {
            "last_measurement": self.latest.text if self.latest else None,
            "count": self.count,
            "avg": self.mean,
        }

    def encode(self) -> bytes:
        """A compact, versioned record: ``[1,count,"hex mantissa",exponent,"ts"]``."""
        assert self.latest is not None, "empty statistics are not stored"
        return _RECORD_JSON.encode(
            [
                _ENCODING_VERSION,
                self.count,
                format(self.mantissa, "x"),
                self.exponent,
                self.latest.text,
            ]
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Stats:
        """Inverse of `encode`; raises ValueError for a record it did not write.

        A record of a version this release cannot read raises
        `UnknownRecordVersion`: a newer release wrote it, and reading it as
        an older one would drop what that release added (and a write would
        then overwrite it without those fields).
        """
        try:
            fields = json.loads(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"not a statistics record: {data[:80]!r}") from error
        version = fields[0] if type(fields) is list and fields else None
        if type(version) is int and version not in _READABLE_VERSIONS:
            raise UnknownRecordVersion(version)
        try:
            version, count, mantissa, exponent, text = fields
        except (TypeError, ValueError) as error:
            raise ValueError(f"not a statistics record: {data[:80]!r}") from error
        # `type` first: JSON true is a Python int equal to 1.
        if type(version) is not int or version != _ENCODING_VERSION:
            raise ValueError(f"unknown statistics record version {version!r}")
        if not (
            type(count) is int
            and count > 0
            and type(mantissa) is str
            and type(exponent) is int
            and type(text) is str
        ):
            raise ValueError(f"malformed statistics record: {data[:80]!r}")
        return cls(count, int(mantissa, 16), exponent, Timestamp.parse(text))


# Made once: `json.dumps` with options builds an encoder on every call.
_RECORD_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class UnknownRecordVersion(ValueError):
    """A statistics record of a version this release does not read."""

    def __init__(self, version: int) -> None:
        super().__init__(f"statistics record version {version}, which this release cannot read")
        self.version = version


EMPTY = Stats()
