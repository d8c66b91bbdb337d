"""What a POST body may be sent as: media types, content codings, and inflating within the limit."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstats.core.body import (
    CODINGS,
    MEDIA_TYPE_RULES,
    check_media_type,
    content_coding,
    decode,
)
from sensorstats.core.errors import CorruptBody, UnsupportedContentCoding, UnsupportedMediaType

MiB = 1 << 20


def bomb(inflated: int) -> bytes:
    """A gzip body of zeros that inflates to `inflated` bytes, made piece by piece."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [compressor.compress(zeros) for _ in range(inflated // MiB)]
    return b"".join(parts) + compressor.flush()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# --- media types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "APPLICATION/JSON",
        "application/json;charset=utf-8",
        'application/json ; charset="UTF-8"',
        "application/json; profile=x",
        "application/vnd.api+json",
        "application/merge-patch+json",
        "application/x-www-form-urlencoded",
    ],
)
def test_json_and_what_curl_sends_are_accepted(content_type):
    check_media_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "text/plain",
        "text/json",
        "*/*",
        "application/*",
        "application/+json",
        "application/json+xml",
        "application/json; charset=utf-16",
        "application/json; charset=utf-8; charset=latin-1",
        "multipart/form-data; boundary=x",
        "json",
    ],
)
def test_anything_else_is_unsupported_naming_what_is(content_type):
    with pytest.raises(UnsupportedMediaType) as refused:
        check_media_type(content_type)
    assert refused.value.detail == (
        f"Content-Type {content_type} is not accepted; send the batch as {MEDIA_TYPE_RULES}"
    )


def test_a_huge_content_type_is_refused_quickly_and_shown_shortened():
    huge = "application/" + "x" * 16_000
    with pytest.raises(UnsupportedMediaType) as refused:
        check_media_type(huge)
    assert f"({len(huge)} characters)" in refused.value.detail
    assert len(refused.value.detail) < 400


# --- content codings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        ("GZip", "gzip"),
        ("x-gzip", "gzip"),  # RFC 9110 §8.4.1.3
        (" gzip ,identity", "gzip"),
        ("deflate", "deflate"),
    ],
)
def test_gzip_and_deflate_are_the_codings_read(header, coding):
    assert content_coding(header) == coding


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("br", "is not supported"),
        ("compress", "is not supported"),
        ("zstd", "is not supported"),
        ("gzip, gzip", "compresses more than once"),
        ("deflate, gzip", "compresses more than once"),
    ],
)
def test_other_codings_are_unsupported_naming_those_that_are(header, why):
    with pytest.raises(UnsupportedContentCoding) as refused:
        content_coding(header)
    assert refused.value.supported == CODINGS == ("gzip", "deflate")
    assert refused.value.detail.startswith(f"Content-Encoding {header} {why}; ")
    assert "gzip or deflate" in refused.value.detail


# --- decoding within the limit -------------------------------------------------------------

BATCH = b'[{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]'


@pytest.mark.parametrize(
    ("coding", "compressed"),
    [
        (None, BATCH),
        ("gzip", gzip.compress(BATCH)),
        ("gzip", gzip.compress(BATCH[:20]) + gzip.compress(BATCH[20:])),  # two members
        ("deflate", zlib.compress(BATCH)),  # RFC 9110's deflate: the zlib format
        ("deflate", raw_deflate(BATCH)),  # what some clients send as deflate
    ],
)
def test_a_compressed_body_decodes_to_what_was_compressed(coding, compressed):
    assert decode(compressed, coding, len(BATCH)) == BATCH


@given(st.binary(max_size=2000), st.integers(0, 2500), st.sampled_from([None, *CODINGS]))
def test_decoding_gives_the_body_within_the_limit_and_none_beyond(data, limit, coding):
    compressed = {None: data, "gzip": gzip.compress(data), "deflate": zlib.compress(data)}
    got = decode(compressed[coding], coding, limit)
    assert got == (data if len(data) <= limit else None)


def test_a_bomb_is_refused_after_inflating_at_most_the_limit():
    body = bomb(1 << 30)  # 1 GiB of zeros in about 1 MiB
    assert len(body) < MiB
    tracemalloc.start()
    try:
        assert decode(body, "gzip", MiB) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The limit and one byte, the unread rest of the body (zlib keeps a copy)
    # and zlib's window: a few MiB, never the gigabyte.
    assert peak < 4 * MiB


@pytest.mark.parametrize(
    ("coding", "body", "what"),
    [
        ("gzip", b"not gzip at all", "it is corrupt"),
        ("gzip", gzip.compress(BATCH)[:-4], "it ends before the compressed data does"),
        ("gzip", gzip.compress(BATCH) + b"junk", "something follows the compressed data"),
        ("gzip", BATCH, "it is corrupt"),
        ("deflate", zlib.compress(BATCH)[:10], "it ends before the compressed data does"),
        ("deflate", b"\xff\xff\xff", "it is corrupt"),
    ],
)
def test_a_corrupt_body_says_what_is_wrong_and_what_to_send(coding, body, what):
    with pytest.raises(CorruptBody) as refused:
        decode(body, coding, MiB)
    assert refused.value.detail == (
        f"the body is not valid {coding} data: {what}; send the whole batch compressed with "
        f"{coding}, or uncompressed without Content-Encoding"
    )


def test_an_empty_body_is_empty_whatever_its_coding():
    assert decode(b"", "gzip", 10) == b""
