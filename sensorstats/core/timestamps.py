"""What a measurement's timestamp may be, stated once.

`TIMESTAMP_RULES` is the rule in words: the OpenAPI document and the HTTP
contract (sensorstats/web/README.md) state it as is. `parse_datetime` is
the rule in code, and its errors say what was wrong in the same words, with
an example.

Why the rule is what it is. Whatever `datetime.fromisoformat` (3.11)
accepts, and a lowercase ``z``, which RFC 3339 allows and it refuses; at
most `MAX_TIMESTAMP_LENGTH` characters (it accepts any number of fractional
digits, and stored records must stay bounded) and no unpaired surrogates
(it accepts any character as the separator, and such a string cannot be
stored or served as UTF-8). Stored records are read by the same rule, so
the rule may only ever accept more. A timestamp without an offset is UTC:
the service is not told a device's zone, and guessing one (its own) would
order the same readings differently on instances in different zones. A
date alone is its midnight, since `fromisoformat` reads it so. Instants are
compared at microsecond precision, Python's; equal instants (``…Z`` and
``…+00:00``, or digits past the sixth) are resolved by the greater string,
so the result never depends on arrival order (`stats.Timestamp`).
"""

from __future__ import annotations

import re
from datetime import datetime

TIMESTAMP_EXAMPLE = "2021-11-09T21:38:09+01:00"
# `fromisoformat` accepts any number of fractional digits; a stored record
# must stay bounded.
MAX_TIMESTAMP_LENGTH = 64

TIMESTAMP_RULES = (
    f"An ISO 8601 date-time such as {TIMESTAMP_EXAMPLE}, as Python 3.11's "
    f"datetime.fromisoformat reads it, at most {MAX_TIMESTAMP_LENGTH} characters; it is "
    "served back exactly as sent. The offset from UTC is Z or +hh:mm or -hh:mm, between "
    "-23:59 and +23:59; RFC 3339's lowercase t and z are accepted too. A timestamp without "
    "an offset (2021-11-09T21:38:09) is taken as UTC: the service cannot know the zone a "
    "device is in, so devices not on UTC should send their offset. A date alone "
    "(2021-11-09) is its midnight, likewise UTC. A sensor's last measurement is the one "
    "with the latest instant; equal instants written differently go to the greater string."
)

UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")
# A UTC offset at the end of a date-time: its hours.
_OFFSET_HOURS = re.compile(r".+[Tt ].*\d[+-](\d\d)(?::?\d\d(?::?\d\d(?:[.,]\d+)?)?)?")
# What `datetime` says of a field out of range ("day is out of range for
# month"): plain words worth passing on. Anything else it says is not.
_FIELD_RANGE = re.compile(
    r"year -?\d+ is out of range|day is out of range for month"
    r"|(?:month|hour|minute|second) must be in \d+\.\.\d+"
)


def parse_datetime(text: str) -> datetime:
    """`text` as a datetime, by `TIMESTAMP_RULES` (naive if it has no offset).

    Raises ValueError whose message completes "the timestamp ..." for a
    person: what is wrong, and a valid example.
    """
    if len(text) > MAX_TIMESTAMP_LENGTH:
        raise ValueError(
            f"must be at most {MAX_TIMESTAMP_LENGTH} characters, such as {TIMESTAMP_EXAMPLE}"
        )
    if not text.isascii() and UNPAIRED_SURROGATE.search(text):
        # fromisoformat takes any separator; this one could not be stored or served.
        raise ValueError(
            f"must not contain unpaired surrogates; send a date-time such as {TIMESTAMP_EXAMPLE}"
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        reason = str(error)
    if text.endswith("z"):
        try:
            return datetime.fromisoformat(text[:-1] + "Z")
        except ValueError as error:
            reason = str(error)
    raise ValueError(_problem(text, reason)) from None


def _problem(text: str, reason: str) -> str:
    offset = _OFFSET_HOURS.fullmatch(text)
    if offset and int(offset.group(1)) >= 24:
        return (
            "has an offset of 24 hours or more: the offset from UTC must be between "
            f"-23:59 and +23:59, as in {TIMESTAMP_EXAMPLE}"
        )
    if _FIELD_RANGE.fullmatch(reason):
        return f"is not a valid date-time ({reason}); send one such as {TIMESTAMP_EXAMPLE}"
    return f"must be an ISO 8601 date-time such as {TIMESTAMP_EXAMPLE}"
