"""Idempotency-Key values and payload fingerprints."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstats.core import stats
from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.idempotency import (
    DEFAULT_WINDOW_SECONDS,
    MAX_KEY_LENGTH,
    IdempotencyKey,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    canonical_form,
    exact_decimal,
    fingerprint,
    parse_key_header,
)


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"with space and \\"quote\\" and \\\\"', 'with space and "quote" and \\'),
        ("  padded\t", "padded"),
        # Only blanks are stripped, never a character of the key.
        ("XabcX", "XabcX"),
        ("a" * MAX_KEY_LENGTH, "a" * MAX_KEY_LENGTH),
    ],
)
def test_structured_field_strings_and_bare_tokens_are_keys(header: str, key: str) -> None:
    assert parse_key_header(header) == key


@pytest.mark.parametrize(
    "header",
    ['""', "", "two words", '"unterminated', '"bad \\escape"', "caf\u00e9", "a" * 256, '"\x01"'],
)
def test_anything_else_is_refused(header: str) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        parse_key_header(header)


def fingerprint_of(body: str) -> str:
    return fingerprint(parse_batch(body.encode(), Limits()))


def test_the_fingerprint_ignores_layout_key_order_and_item_order() -> None:
    one = (
        '[{"sensor":"a","timestamp":"2021-11-09T21:38:09Z","value":1},'
        '{"sensor":"b","timestamp":"2021-11-09T21:38:10Z","value":2.5}]'
    )
    other = """[ {"value": 2.5, "timestamp": "2021-11-09T21:38:10Z", "sensor": "b"},
                 {"timestamp": "2021-11-09T21:38:09Z", "sensor": "a", "value": 1, "extra": 0} ]"""
    assert fingerprint_of(one) == fingerprint_of(other)


@pytest.mark.parametrize(
    "changed",
    [
        '[{"sensor":"a","timestamp":"2021-11-09T21:38:09Z","value":1.5}]',
        '[{"sensor":"a","timestamp":"2021-11-09T21:38:09+00:00","value":1}]',
        '[{"sensor":"A","timestamp":"2021-11-09T21:38:09Z","value":1}]',
        '[{"sensor":"a","timestamp":"2021-11-09T21:38:09Z","value":1},'
        '{"sensor":"a","timestamp":"2021-11-09T21:38:09Z","value":0}]',
    ],
)
def test_any_change_of_effect_changes_the_fingerprint(changed: str) -> None:
    original = '[{"sensor":"a","timestamp":"2021-11-09T21:38:09Z","value":1}]'
    assert fingerprint_of(original) != fingerprint_of(changed)


def test_the_storage_name_separates_scopes_and_is_short() -> None:
    one = IdempotencyKey("client-1", "k", "f")
    assert one.digest != IdempotencyKey("client-2", "k", "f").digest
    assert one.digest != IdempotencyKey("client-1\0k", "", "f").digest
    assert len(one.digest) == 32


# Two sensors, one of them measured twice, a value that is not a short decimal
# (0.1 is 0.1000000000000000055511151231257827021181583404541015625 as a
# double) and an id beyond ASCII.
LITERAL_BATCH = (
    '[{"sensor":"a","timestamp":"2021-11-09T21:38:09Z","value":1},'
    '{"sensor":"b/\u00fc","timestamp":"2021-11-09T21:38:10+01:00","value":0.1},'
    '{"sensor":"a","timestamp":"2021-11-09T21:38:08Z","value":2.5}]'
)


def test_the_canonical_form_and_fingerprint_of_a_literal_batch_are_pinned() -> None:
    """Every keyed retry across a release that changed these would be refused with 422."""
    deltas = parse_batch(LITERAL_BATCH.encode(), Limits())
    assert canonical_form(deltas) == (
        b'[["a",2,"3.5",63772177089000000,"2021-11-09T21:38:09Z"],'
        b'["b/\\u00fc",1,"0.1000000000000000055511151231257827021181583404541015625",'
        b'63772173490000000,"2021-11-09T21:38:10+01:00"]]'
    )
    assert fingerprint(deltas) == "81dfc59b0d65d7de6fe943050c2da642"


def test_the_fingerprint_does_not_depend_on_the_record_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deltas = parse_batch(LITERAL_BATCH.encode(), Limits())
    before = fingerprint(deltas)
    # A release that writes another record version, say one with min and max.
    monkeypatch.setattr(stats, "_ENCODING_VERSION", 2)
    monkeypatch.setattr(stats.Stats, "encode", lambda self: b"a record of another format")
    assert fingerprint(deltas) == before


def test_sensors_without_measurements_do_not_count() -> None:
    deltas = parse_batch(LITERAL_BATCH.encode(), Limits())
    # Wherever they sort: before, between or after sensors that count.
    with_empty = {**deltas, "0": stats.EMPTY, "b": stats.EMPTY, "empty": stats.EMPTY}
    assert fingerprint(with_empty) == fingerprint(deltas)


@given(st.integers(), st.integers(min_value=-1100, max_value=64))
def test_the_decimal_sum_is_exact(mantissa: int, exponent: int) -> None:
    text = exact_decimal(mantissa, exponent)
    assert Fraction(Decimal(text)) == mantissa * Fraction(2) ** exponent
    assert not text.endswith(".")
    assert not ("." in text and text.endswith("0"))


@pytest.mark.parametrize(
    ("mantissa", "exponent", "text"),
    [
        (3, 0, "3"),
        (3, 2, "12"),
        (-3, 2, "-12"),
        (7, -1, "3.5"),
        (-7, -1, "-3.5"),
        (1, -3, "0.125"),
        (-1, -3, "-0.125"),
        # Pairs that are not normalised write the same number as their normal form.
        (4, -2, "1"),
        (-12, -2, "-3"),
        (0, -3, "0"),
        (0, 0, "0"),
    ],
)
def test_the_decimal_sum_of_these_pairs(mantissa: int, exponent: int, text: str) -> None:
    assert exact_decimal(mantissa, exponent) == text


def test_the_sum_is_compared_as_a_number_not_as_its_stored_pair() -> None:
    one = parse_batch(LITERAL_BATCH.encode(), Limits())
    # 3.5 as 7 * 2**-1 (normalised) or 14 * 2**-2: the decimal is the same.
    other = {**one, "a": replace(one["a"], mantissa=14, exponent=-2)}
    assert fingerprint(one) == fingerprint(other)


@pytest.mark.parametrize(
    ("scope", "key", "digest"),
    [
        # sha256 of scope, NUL, key; the first 32 hex digits.
        pytest.param("", "k", "f6dc1034b093dd79d1b96f328cb1e489", id="no-scope"),
        pytest.param("ab", "c", "6c032e631d39a14d85aff7e319546af7", id="ab-c"),
        pytest.param("a", "bc", "40bb547d936bbd31318ee37ac8799e7e", id="a-bc"),
        pytest.param("client-1", "8e03978e", "e15733d4790dd0df7a7358f551bcb126", id="client"),
    ],
)
def test_the_storage_name_is_a_literal_digest_of_scope_nul_key(
    scope: str, key: str, digest: str
) -> None:
    """Stored markers are named by it: a change would let retries across a release count twice,
    and without the NUL client "ab" with key "c" would share client "a"'s key "bc"."""
    assert IdempotencyKey(scope, key, "f").digest == digest
    # The fingerprint is not part of the name.
    assert IdempotencyKey(scope, key, "other").digest == digest


NOT_A_KEY = (
    'Idempotency-Key must be a Structured Field string ("...") or a token of '
    "printable ASCII characters"
)


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        pytest.param('""', "Idempotency-Key must not be empty", id="empty-string"),
        pytest.param("", NOT_A_KEY, id="empty-header"),
        pytest.param(" \t", NOT_A_KEY, id="only-blanks"),
        pytest.param("two words", NOT_A_KEY, id="space"),
        pytest.param('"unterminated', NOT_A_KEY, id="unterminated"),
        pytest.param("caf\u00e9", NOT_A_KEY, id="non-ascii"),
        # Only SP and HTAB are blanks around a field value: other Unicode spaces
        # stay, and refuse the key rather than making it "abc".
        pytest.param("abc\xa0", NOT_A_KEY, id="no-break-space"),
        pytest.param("abc\u3000", NOT_A_KEY, id="ideographic-space"),
        pytest.param("\u2003abc", NOT_A_KEY, id="em-space"),
        pytest.param("abc\n", NOT_A_KEY, id="newline"),
        pytest.param("abc\r", NOT_A_KEY, id="carriage-return"),
        pytest.param(
            "a" * 256, "Idempotency-Key must be at most 255 characters, got 256", id="long-token"
        ),
        pytest.param(
            '"' + "a" * 300 + '"',
            "Idempotency-Key must be at most 255 characters, got 300",
            id="long-string",
        ),
    ],
)
def test_each_refusal_says_what_is_wrong(header: str, detail: str) -> None:
    with pytest.raises(InvalidIdempotencyKey) as caught:
        parse_key_header(header)
    assert str(caught.value) == detail
    assert caught.value.detail == detail


def test_refusals_carry_their_detail_for_the_problem_document() -> None:
    assert InvalidIdempotencyKey("bad key").detail == "bad key"
    assert IdempotencyKeyReused("used").detail == "used"
    assert str(IdempotencyKeyReused("used")) == "used"


def test_a_key_is_a_value_nobody_can_change() -> None:
    # Stores keep keys in dicts and sets.
    key = IdempotencyKey("client", "k", "f")
    assert {key: 1}[IdempotencyKey("client", "k", "f")] == 1
    with pytest.raises(FrozenInstanceError):
        key.key = "other"  # type: ignore[misc]


def test_keys_are_remembered_ten_minutes_by_default() -> None:
    # As the README's settings table says (SENSORSTATS_IDEMPOTENCY_TTL).
    assert DEFAULT_WINDOW_SECONDS == 600


def test_the_limit_counts_the_unescaped_key() -> None:
    escaped = '"' + "\\\\" * MAX_KEY_LENGTH + '"'
    assert parse_key_header(escaped) == "\\" * MAX_KEY_LENGTH
    assert MAX_KEY_LENGTH == 255
