"""Idempotency-Key values and payload fingerprints."""

from __future__ import annotations

import pytest

from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKey,
    InvalidIdempotencyKey,
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
