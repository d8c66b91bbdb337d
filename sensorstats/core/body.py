"""What a POST body may be sent as: its media types and content codings.

A batch is JSON whatever it is labelled, within `MEDIA_TYPE_RULES`: the
labels a JSON client or ``curl -d`` puts on it are accepted, and a label
saying it is something else (XML, a form's fields) is refused rather than
parsed as JSON by surprise.

A compressed body (`CODING_RULES`) is inflated by `decode`, never beyond
the body limit and one byte: zlib stops there, so a small body that would
inflate to gigabytes costs what one inflating to the limit costs, and is
refused. The limit applies to the batch as decoded, compressed or not.
"""

from __future__ import annotations

import re
import zlib

from sensorstats.core.errors import CorruptBody, UnsupportedContentCoding, UnsupportedMediaType

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends
MEDIA_TYPE_RULES = (
    f"{JSON}, any application/*+json type, {FORM} (what curl -d sends) or none; "
    "a charset, if given, must be utf-8"
)
GZIP, DEFLATE = "gzip", "deflate"
CODINGS = (GZIP, DEFLATE)
CODING_RULES = (
    "gzip or deflate (zlib, or raw deflate as some clients send it), once, or none; "
    "the body limit applies to the decompressed body"
)

# RFC 6838's restricted-name characters, before a +json suffix.
_JSON_SUFFIXED = re.compile(r"application/[a-z0-9!#$&^_.+-]+\+json")
# What of a refused header a detail repeats.
_SHOWN_CHARACTERS = 80
# RFC 9110 §8.4.1.3: x-gzip is gzip; identity means no coding at all.
_ALIASES = {"x-gzip": GZIP}
_IDENTITY = "identity"
_GZIP_MAGIC = b"\x1f\x8b"


def check_media_type(content_type: str | None) -> None:
    """Raise UnsupportedMediaType unless `content_type` is one a batch is read from."""
    if not content_type or not content_type.strip(" \t"):
        return
    media, *parameters = content_type.split(";")
    media = media.strip(" \t").lower()
    if media in (JSON, FORM) or _JSON_SUFFIXED.fullmatch(media):
        charsets = [
            value.strip(" \t").strip('"').lower()
            for name, _, value in (p.partition("=") for p in parameters)
            if name.strip(" \t").lower() == "charset"
        ]
        if all(charset == "utf-8" for charset in charsets):
            return
    raise UnsupportedMediaType(
        f"Content-Type {_shown(content_type)} is not accepted; send the batch as {MEDIA_TYPE_RULES}"
    )


def content_coding(content_encoding: str | None) -> str | None:
    """The coding `content_encoding` names (None: no coding); raise UnsupportedContentCoding."""
    if content_encoding is None:
        return None
    named = [token.strip(" \t").lower() for token in content_encoding.split(",")]
    codings = [_ALIASES.get(c, c) for c in named if c and c != _IDENTITY]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return codings[0]
    what = "is not supported" if len(codings) == 1 else "compresses more than once"
    raise UnsupportedContentCoding(
        f"Content-Encoding {_shown(content_encoding)} {what}; send the body uncompressed "
        f"or compressed once with {' or '.join(CODINGS)}",
        CODINGS,
    )


def decode(body: bytes, coding: str | None, limit: int) -> bytes | None:
    """`body` decoded from `coding`; None if that would take more than `limit` bytes.

    Never holds more than `limit` + 1 decoded bytes. Raises CorruptBody.
    """
    if coding is None or not body:
        return body if len(body) <= limit else None
    pieces = []
    size = 0
    rest = body
    while rest:
        inflater = zlib.decompressobj(_window_bits(coding, rest))
        try:
            piece = inflater.decompress(rest, limit + 1 - size)
        except zlib.error:
            raise CorruptBody(_corrupt(coding, "it is corrupt")) from None
        size += len(piece)
        if size > limit:
            return None
        pieces.append(piece)
        if not inflater.eof:
            raise CorruptBody(_corrupt(coding, "it ends before the compressed data does"))
        rest = inflater.unused_data
        # A gzip body may hold several members, one after another (RFC 1952).
        if rest and not (coding == GZIP and rest.startswith(_GZIP_MAGIC)):
            raise CorruptBody(_corrupt(coding, "something follows the compressed data"))
    return b"".join(pieces)


def _window_bits(coding: str, data: bytes) -> int:
    if coding == GZIP:
        return 16 + zlib.MAX_WBITS
    # HTTP's deflate is the zlib format (RFC 1950): a header whose first byte
    # names deflate and whose first two bytes are a multiple of 31. Some
    # clients send a raw deflate stream instead.
    zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and int.from_bytes(data[:2]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def _corrupt(coding: str, what: str) -> str:
    return (
        f"the body is not valid {coding} data: {what}; send the whole batch compressed "
        f"with {coding}, or uncompressed without Content-Encoding"
    )


def _shown(value: str) -> str:
    if len(value) <= _SHOWN_CHARACTERS:
        return value
    return f"{value[:_SHOWN_CHARACTERS]}... ({len(value)} characters)"
