"""pythrust compression: negotiation, filters, BREACH guard and padding, streaming encoders."""

from __future__ import annotations

import gzip
import random
import struct
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from thruster.compression import (
    PREFIX_LIMIT,
    Compressor,
    accepted_encodings,
    choose_encoding,
    compressible_type,
    padding_for,
    request_blocks_compression,
    response_blocks_compression,
)

ENCODINGS = (b"gzip", b"zstd", b"br")
PADDING = b"Padding-Padding-Padd"


def _body(size: int, seed: int = 1) -> bytes:
    """Text-like data that compresses but not to nothing, so encoders do not emit it all at once."""
    words = [b"alpha", b"beta", b"gamma", b"delta", b"<div>", b"</div>", b"\n", b"thruster"]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + str(rng.randrange(10**6)).encode() + b" "
    return bytes(out[:size])


def _decode_all(encoding: bytes, data: bytes) -> bytes:
    """The body a client decodes from a complete response."""
    if encoding == b"gzip":
        return gzip.decompress(data)
    if encoding == b"br":
        return brotli.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)


def _stream_decoder(encoding: bytes) -> Callable[[bytes], bytes]:
    """A decoder for a response arriving in pieces, as a client reads it off the wire."""
    if encoding == b"gzip":
        return zlib.decompressobj(16 + 15).decompress
    if encoding == b"br":
        return brotli.Decompressor().process
    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress


# --- negotiation


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"", None),
        (b"gzip", b"gzip"),
        (b"br", b"br"),
        (b"zstd", b"zstd"),
        (b"gzip, deflate, br, zstd", b"zstd"),  # a browser: ties go to zstd
        (b"gzip, br", b"br"),  # then to br
        (b"deflate, identity", None),
        (b"zstd;q=0.5, gzip;q=0.8", b"gzip"),
        (b"br;q=0.9, gzip", b"gzip"),  # no q means 1
        (b"zstd;q=0.001, br;q=0", b"zstd"),
        (b"gzip;q=0", None),  # q=0 refuses
        (b"zstd;q=0, br;q=0.0, gzip;q=0.1", b"gzip"),
        (b"*", b"zstd"),
        (b"*;q=0.5, gzip", b"gzip"),  # an explicit gzip outweighs the wildcard
        (b"gzip;q=0.5, *;q=0.8", b"zstd"),  # the wildcard lends 0.8 to the unlisted
        (b"*, zstd;q=0", b"br"),  # an explicit refusal beats the wildcard
        (b"*;q=0", None),
        (b"  GZIP ;  Q=0.5 , Br;q=0.4", b"gzip"),  # case and whitespace
        (b"gzip ;q=1.000,br; q=0.999", b"gzip"),
        (b"zstd;q=abc, gzip", b"gzip"),  # malformed q: as if zstd were absent
        (b"zstd;q=1.5, gzip;q=0.2", b"gzip"),
        (b"zstd;q=0.1234, br;q=0.01", b"br"),  # more than three decimals
        (b"zstd;q=, gzip;q=0.1", b"gzip"),
        (b"zstd;q=-1, br;q=1e0", None),
        (b"gzip;level=9", b"gzip"),  # other parameters do not matter
        (b",, ;; == ,", None),
        (b"\xff\xfe, gzip", b"gzip"),
    ],
)
def test_choose_encoding(header: bytes | None, expected: bytes | None) -> None:
    assert choose_encoding(header) == expected


# --- content types


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, True),
        (b"", True),
        (b"text/html", True),
        (b"text/html; charset=utf-8", True),
        (b"application/json", True),
        (b"text/event-stream", True),
        (b"image/svg+xml", True),
        (b"image/bmp", True),
        (b"image/png", False),
        (b" IMAGE/PNG", False),
        (b"image/jpeg", False),
        (b"image/jpg", False),
        (b"image/webp", False),
        (b"image/avif", False),
        (b"application/zip", False),
        (b"application/gzip", False),
        (b"application/x-7z-compressed", False),
        (b"application/zstd", False),
        (b"application/x-xz", False),
        (b"video/mp4", False),
        (b"audio/ogg", False),
    ],
)
def test_compressible_type(content_type: bytes | None, expected: bool) -> None:
    assert compressible_type(content_type) is expected


# --- BREACH guard


@pytest.mark.parametrize(
    ("cookie", "authorization", "csrf", "expected"),
    [
        (None, None, None, False),
        (b"", b"", b"", False),
        (b"session=1", None, None, True),
        (None, b"Bearer x", None, True),
        (None, None, b"token", True),
    ],
)
def test_request_blocks_compression(
    cookie: bytes | None, authorization: bytes | None, csrf: bytes | None, expected: bool
) -> None:
    assert request_blocks_compression(cookie, authorization, csrf) is expected


@pytest.mark.parametrize(
    ("set_cookie", "cache_control", "vary", "expected"),
    [
        (False, None, None, False),
        (True, None, None, True),
        (False, b"private", None, True),
        (False, b'private="x"', None, True),
        (False, b"max-age=0, No-Store", None, True),
        (False, b"public, max-age=60", None, False),
        (False, b"no-store-ish, x-private", None, False),
        (False, b"max-age=60, s-maxage=private", None, False),
        (False, None, b"Accept-Encoding", False),
        (False, None, b"Accept-Encoding, Cookie", True),
        (False, None, b"COOKIE", True),
        (False, None, b"cookies, set-cookie", False),
    ],
)
def test_response_blocks_compression(
    set_cookie: bool, cache_control: bytes | None, vary: bytes | None, expected: bool
) -> None:
    assert response_blocks_compression(set_cookie, cache_control, vary) is expected


# --- padding


def test_padding_follows_the_spec_formula() -> None:
    content = _body(2000)
    v = zlib.crc32(content)
    v = ((v << 19 | v >> 13) & 0xFFFFFFFF) ^ 0xAB0755DE
    length = 1 + v % 1000
    assert padding_for(content, 1000) == (b"Padding-" * 200)[:length]


def test_padding_is_deterministic_bounded_and_varied() -> None:
    contents = [_body(1500, seed) for seed in range(200)]
    pads = [padding_for(content, 32) for content in contents]
    assert pads == [padding_for(content, 32) for content in contents]
    assert all(1 <= len(pad) <= 32 for pad in pads)
    assert len({len(pad) for pad in pads}) >= 20
    assert all(pad == (b"Padding-" * 4)[: len(pad)] for pad in pads)


def test_padding_depends_only_on_the_prefix() -> None:
    prefix = _body(PREFIX_LIMIT)
    tails = [_body(100, seed) for seed in range(20)]
    assert len({padding_for(prefix + tail, 1000) for tail in tails}) == 1
    assert len({padding_for(prefix[:-100] + tail, 1000) for tail in tails}) > 1


@pytest.mark.parametrize("jitter", [0, -5])
def test_no_padding_without_jitter(jitter: int) -> None:
    assert padding_for(_body(2000), jitter) == b""


# --- encoders


@pytest.mark.parametrize("padding", [b"", PADDING])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_over_several_writes(encoding: bytes, padding: bytes) -> None:
    body = _body(200_000)
    compressor = Compressor(encoding, padding)
    pieces = [compressor.compress(body[i : i + 7000]) for i in range(0, len(body), 7000)]
    encoded = b"".join(pieces) + compressor.finish()
    assert len(encoded) < len(body) // 2
    assert _decode_all(encoding, encoded) == body


@pytest.mark.parametrize("padding", [b"", PADDING])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_flush_makes_everything_so_far_decodable(encoding: bytes, padding: bytes) -> None:
    first, second = _body(3000, 1), _body(3000, 2)
    compressor = Compressor(encoding, padding)
    decode = _stream_decoder(encoding)
    assert decode(compressor.compress(first) + compressor.flush()) == first
    assert decode(compressor.compress(second) + compressor.flush()) == second
    assert decode(compressor.finish()) == b""


@pytest.mark.parametrize("padding", [b"", PADDING])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_body(encoding: bytes, padding: bytes) -> None:
    assert _decode_all(encoding, Compressor(encoding, padding).finish()) == b""


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_padding_lengthens_the_output_only(encoding: bytes) -> None:
    body = _body(5000)
    plain, padded = Compressor(encoding), Compressor(encoding, PADDING)
    plain_out = plain.compress(body) + plain.finish()
    padded_out = padded.compress(body) + padded.finish()
    assert PADDING not in plain_out
    assert PADDING in padded_out
    assert 0 <= len(padded_out) - len(plain_out) - len(PADDING) <= 10
    assert _decode_all(encoding, padded_out) == body


def test_gzip_padding_is_the_header_comment() -> None:
    compressor = Compressor(b"gzip", PADDING)
    out = compressor.compress(b"x") + compressor.finish()
    magic, method, flags, mtime, xfl, os_ = struct.unpack("<2sBBIBB", out[:10])
    assert (magic, method, flags, mtime, xfl, os_) == (b"\x1f\x8b", 8, 0x10, 0, 0, 255)
    assert out[10 : out.index(b"\0", 10)] == PADDING


def test_gzip_header_without_padding_has_no_flags() -> None:
    out = Compressor(b"gzip").finish()
    assert out[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_gzip_rejects_a_padding_that_would_end_the_comment() -> None:
    with pytest.raises(ValueError):
        Compressor(b"gzip", b"Pad\0ding")


def test_zstd_padding_is_a_skippable_frame_after_the_data() -> None:
    compressor = Compressor(b"zstd", PADDING)
    out = compressor.compress(b"x") + compressor.finish()
    frame = struct.pack("<II", 0x184D2A50, len(PADDING)) + PADDING
    assert out.endswith(frame)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out[: -len(frame)]) == b"x"


@pytest.mark.parametrize("length", [1, 256, 257, 65536, 70_000])
def test_brotli_padding_of_any_length_is_skipped(length: int) -> None:
    padding = b"P" * length
    body = _body(5000)
    plain, padded = Compressor(b"br"), Compressor(b"br", padding)
    plain_out = plain.compress(body) + plain.finish()
    padded_out = padded.compress(body) + padded.finish()
    assert brotli.decompress(padded_out) == body
    assert 3 <= len(padded_out) - len(plain_out) - length <= 6  # a stream header flush and a block header


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError):
        Compressor(b"deflate")


def test_brotli_refuses_padding_beyond_one_metadata_block() -> None:
    with pytest.raises(ValueError):
        Compressor(b"br", b"P" * ((1 << 24) + 1))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, set()),
        (b"gzip", {b"gzip"}),
        (b"br;q=0.5, gzip;q=0", {b"br"}),
        (b"*", {b"gzip", b"br", b"zstd"}),
        (b"*, zstd;q=0", {b"gzip", b"br"}),
    ],
)
def test_accepted_encodings_lists_every_coding_the_client_takes(header, expected) -> None:
    assert accepted_encodings(header) == expected
