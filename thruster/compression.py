"""Response compression for pythrust: negotiation, the filters and guard of thruster, and streaming encoders.

thruster wraps every response in gzhttp (spec §7). This module holds the decisions that
wrapper makes and the encoders it streams through; buffering and header rewriting stay
with the caller. Deliberate differences from thruster: brotli is offered as well as zstd
and gzip, the response side of the guard is checked before deciding (thruster checks it
too late, §7.4).
"""

from __future__ import annotations

import re
import struct
import zlib
from functools import partial

import brotli
import zstandard

MIN_SIZE = 1024
PREFIX_LIMIT = 64 * 1024  # bytes of content the jitter padding is derived from

_PREFERENCE = (b"zstd", b"br", b"gzip")  # on equal q the first wins, as thruster prefers zstd
_QVALUE = re.compile(rb"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")  # RFC 9110 §12.4.2

_REJECTED_PARTS = (b"compress", b"zip", b"snappy", b"lzma", b"xz", b"zstd", b"brotli", b"stuffit")
# image/jp also covers thruster's image/jpeg and image/jpg.
_REJECTED_PREFIXES = (
    b"video/",
    b"audio/",
    b"image/jp",
    b"image/png",
    b"image/apng",
    b"image/webp",
    b"image/gif",
    b"image/avif",
    b"image/heic",
    b"image/heif",
    b"image/jxl",
)

_GZIP_LEVEL = 6  # thruster's level
_ZSTD_LEVEL = 3
# Quality 4: on text about twice as fast as gzip level 6 for a similar size, with half the
# per-stream memory of quality 5 (which is some 8% smaller but 1.6x slower).
_BROTLI_QUALITY = 4
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
_BROTLI_METADATA_MAX = 1 << 24  # MSKIPLEN is at most three bytes (RFC 7932 §9.2)


def _weight(params: list[bytes]) -> float | None:
    """The q of one Accept-Encoding element: 1 when absent, None when malformed."""
    for param in params:
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else None
    return 1.0


def choose_encoding(accept_encoding: bytes | None) -> bytes | None:
    """The coding to answer with: highest q > 0, ties to zstd, then br, then gzip.

    A coding listed twice keeps its last weight; one with a malformed q counts as not
    listed. `*` lends its weight to every candidate the header does not name.
    """
    if not accept_encoding:
        return None
    weights = _weights(accept_encoding)
    star = weights.get(b"*", 0.0)
    chosen, chosen_q = None, 0.0
    for coding in _PREFERENCE:
        q = weights.get(coding, star)
        if q > chosen_q:
            chosen, chosen_q = coding, q
    return chosen


def accepted_encodings(accept_encoding: bytes | None) -> frozenset[bytes]:
    """Every candidate coding the client takes (q > 0): for precompressed files, where the best
    coding may have no file but another one does."""
    if not accept_encoding:
        return frozenset()
    weights = _weights(accept_encoding)
    star = weights.get(b"*", 0.0)
    return frozenset(coding for coding in _PREFERENCE if weights.get(coding, star) > 0)


def _weights(accept_encoding: bytes) -> dict[bytes, float]:
    weights: dict[bytes, float] = {}
    for element in accept_encoding.split(b","):
        token, *params = element.split(b";")
        q = _weight(params)
        if q is not None:
            weights[token.strip().lower()] = q
    return weights


def compressible_type(content_type: bytes | None) -> bool:
    """False for media that is already compressed, by thruster's rules (spec §7.2)."""
    if not content_type:
        return True
    value = content_type.strip().lower()
    if value.startswith(_REJECTED_PREFIXES):
        return False
    return not any(part in value for part in _REJECTED_PARTS)


def request_blocks_compression(
    cookie: bytes | None, authorization: bytes | None, csrf_token: bytes | None
) -> bool:
    """True for a request carrying credentials: its response may hold secrets BREACH could recover."""
    return bool(cookie or authorization or csrf_token)


def response_blocks_compression(set_cookie: bool, cache_control: bytes | None, vary: bytes | None) -> bool:
    """True for a personal-looking response: sets a cookie, is private or unstored, or varies on cookies."""
    if set_cookie:
        return True
    if cache_control:
        for directive in cache_control.split(b","):
            if directive.partition(b"=")[0].strip().lower() in (b"private", b"no-store"):
                return True
    return bool(vary) and any(token.strip().lower() == b"cookie" for token in vary.split(b","))


def padding_for(prefix: bytes, jitter: int) -> bytes:
    """BREACH length jitter of 1..jitter bytes, a function of the content so retries cannot average it out.

    thruster hashes with CRC-32C; plain CRC-32 is used because the standard library has it,
    so lengths differ from thruster's but keep the same properties.
    """
    if jitter <= 0:
        return b""
    v = zlib.crc32(memoryview(prefix)[:PREFIX_LIMIT])
    v = ((v << 19 | v >> 13) & 0xFFFFFFFF) ^ 0xAB0755DE
    length = 1 + v % jitter
    return (b"Padding-" * (length // 8 + 1))[:length]


def _gzip_header(padding: bytes) -> bytes:
    """A gzip member header (RFC 1952) carrying the padding as its comment."""
    if not padding:
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    if b"\0" in padding:
        raise ValueError("gzip padding must not contain NUL: it ends the comment")
    return b"\x1f\x8b\x08\x10\x00\x00\x00\x00\x00\xff" + padding + b"\0"


def _zstd_skippable_frame(padding: bytes) -> bytes:
    """A zstd skippable frame holding the padding; decoders drop it."""
    return struct.pack("<II", _ZSTD_SKIPPABLE_MAGIC, len(padding)) + padding


def _brotli_metadata_block(padding: bytes) -> bytes:
    """A brotli metadata meta-block (RFC 7932 §9.2) holding the padding; must start on a byte boundary."""
    if len(padding) > _BROTLI_METADATA_MAX:
        raise ValueError("brotli padding is limited to 16 MiB")
    skip_bytes = max(1, ((len(padding) - 1).bit_length() + 7) // 8)
    # Bits from the lowest: ISLAST=0, MNIBBLES=3 (no nibbles), reserved 0, MSKIPBYTES, MSKIPLEN-1.
    bits = 0b0110 | skip_bytes << 4 | (len(padding) - 1) << 6
    return bits.to_bytes(skip_bytes + 1, "little") + padding


class Compressor:
    """Streaming encoder for one response body.

    The padding (empty for none) rides in a part of the format decoders skip: the gzip
    comment or a brotli metadata block, both in the first output; or a zstd skippable frame
    after the data frame, as thruster places it (a decoder that stops after one frame loses
    only the padding).
    """

    def __init__(self, encoding: bytes, padding: bytes = b"") -> None:
        self._gzip = encoding == b"gzip"
        if self._gzip:
            deflate = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15)
            self._head = _gzip_header(padding)
            self._tail = b""
            self._crc = 0
            self._size = 0
            self._process = deflate.compress
            self._sync = partial(deflate.flush, zlib.Z_SYNC_FLUSH)
            self._end = deflate.flush
        elif encoding == b"zstd":
            zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
            self._head = b""
            self._tail = _zstd_skippable_frame(padding) if padding else b""
            self._process = zstd.compress
            self._sync = partial(zstd.flush, zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            self._end = zstd.flush
        elif encoding == b"br":
            br = brotli.Compressor(quality=_BROTLI_QUALITY)
            # A flush before any data yields just the stream header, ending on a byte boundary.
            self._head = (br.flush() + _brotli_metadata_block(padding)) if padding else b""
            self._tail = b""
            self._process = br.process
            self._sync = br.flush
            self._end = br.finish
        else:
            raise ValueError(f"unsupported encoding {encoding!r}")

    def _take_head(self) -> bytes:
        """The header and padding the first output starts with, then nothing."""
        head, self._head = self._head, b""
        return head

    def compress(self, data: bytes) -> bytes:
        """Encode more of the body; may return b"" while the encoder buffers."""
        if self._gzip:
            self._crc = zlib.crc32(data, self._crc)
            self._size += len(data)
        return self._take_head() + self._process(data)

    def flush(self) -> bytes:
        """Everything the encoder holds, so the client can decode all data so far (SSE)."""
        return self._take_head() + self._sync()

    def finish(self) -> bytes:
        """The end of the body; the encoder is done after this."""
        out = self._take_head() + self._end()
        if self._gzip:
            out += struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        return out + self._tail
