"""What to send for one file and one request: HTTP file-serving semantics without socket I/O.

Shared by X-Sendfile (spec §9) and `pythrust serve DIR`. `plan_file` applies RFC 9110
preconditions and ranges and returns the status, the headers and the byte ranges to
sendfile; the caller writes the head and streams. The helpers map a URL path to a file
safely and choose Content-Type, ETag, Cache-Control and a precompressed sibling.
"""

from __future__ import annotations

import calendar
import math
import mimetypes
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_tz
from functools import lru_cache
from urllib.parse import unquote_to_bytes

MAX_RANGES = 16  # more ranges than this are answered 200 whole (range amplification)
PRECOMPRESSED = ((b"br", ".br"), (b"zstd", ".zst"), (b"gzip", ".gz"))
IMMUTABLE = b"public, max-age=31536000, immutable"

_GET_HEAD = (b"GET", b"HEAD")
_NO_BODY = (b"Content-Length", b"0")
_DAYS = b"Mon Tue Wed Thu Fri Sat Sun".split()
_MONTHS = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
# A '-' or '.' then >= 7 lower-case hex with a digit and a letter (so years, dates and
# version numbers are not taken for digests), followed by another '-' or '.'.
_FINGERPRINT = re.compile(r"[-.](?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,}(?=[-.])")
_MODERN_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".jxl": "image/jxl",
    ".apng": "image/apng",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".map": "application/json",
    ".md": "text/markdown",
    ".ics": "text/calendar",
    ".m4a": "audio/mp4",
    ".gz": "application/gzip",
    ".br": "application/x-brotli",
    ".zst": "application/zstd",
}


def _content_types() -> dict[str, bytes]:
    """Extension -> Content-Type, built once: stdlib defaults (not the host's mime.types,
    so answers do not depend on the machine) plus modern types; text gets a charset."""
    types = {**mimetypes.MimeTypes().types_map[True], **_MODERN_TYPES}
    return {
        ext: (f"{ctype}; charset=utf-8" if ctype.startswith("text/") else ctype).encode("ascii")
        for ext, ctype in types.items()
    }


_CONTENT_TYPES = _content_types()


@dataclass(slots=True)
class FilePlan:
    """The answer for one file and one request; `parts` is [] whenever `ranges` is []."""

    status: int  # 200, 206, 304, 412, 416
    headers: list[tuple[bytes, bytes]]  # to add or override, canonical case
    ranges: list[tuple[int, int]]  # (offset, length) pieces of the file, in order
    parts: list[bytes]  # multipart framing before each range, then the closing boundary


def plan_file(
    size: int,
    mtime: float,
    *,
    method: bytes,
    header: Callable[[bytes], bytes | None],
    etag: bytes | None,
    content_type: bytes,
    cache_control: bytes | None = None,
) -> FilePlan:
    """Decide status, headers and byte ranges for serving a `size`-byte file modified at `mtime`.

    `header` looks up a request header by lower-case name. HEAD is planned exactly as GET
    (same headers, Content-Length included) but with nothing to send.
    """
    modified = math.floor(mtime)  # HTTP dates have second precision
    headers = [(b"Accept-Ranges", b"bytes"), (b"Last-Modified", http_date(modified))]
    if etag is not None:
        headers.append((b"ETag", etag))
    status = _precondition_status(method, header, etag, modified)
    if status == 412:
        headers.append(_NO_BODY)
        return FilePlan(412, headers, [], [])
    pieces = None if status == 304 else _requested_pieces(method, header, etag, modified, size)
    if pieces is not None and not pieces:
        headers += ((b"Content-Range", b"bytes */%d" % size), _NO_BODY)
        return FilePlan(416, headers, [], [])
    if cache_control is not None:  # not on 412/416: an explicit lifetime would make them cacheable
        headers.append((b"Cache-Control", cache_control))
    if status == 304:
        return FilePlan(304, headers, [], [])
    parts: list[bytes] = []
    if pieces is None:
        status, length = 200, size
        pieces = [(0, size)] if size else []
        headers.append((b"Content-Type", content_type))
    elif len(pieces) == 1:
        status, (offset, length) = 206, pieces[0]
        headers += ((b"Content-Type", content_type), (b"Content-Range", _content_range(offset, length, size)))
    else:
        status = 206
        boundary = os.urandom(12).hex().encode("ascii")
        parts = _multipart_framing(boundary, pieces, content_type, size)
        length = sum(map(len, parts)) + sum(piece[1] for piece in pieces)
        headers.append((b"Content-Type", b"multipart/byteranges; boundary=" + boundary))
    headers.append((b"Content-Length", b"%d" % length))
    if method == b"HEAD":
        return FilePlan(status, headers, [], [])
    return FilePlan(status, headers, pieces, parts)


def _precondition_status(
    method: bytes, header: Callable[[bytes], bytes | None], etag: bytes | None, modified: int
) -> int:
    """RFC 9110 §13.2.2 evaluation order: 412, 304, or 0 to go on."""
    value = header(b"if-match")
    if value is not None:
        if not _etag_listed(value, etag, strong=True):
            return 412
    else:
        value = header(b"if-unmodified-since")
        since = None if value is None else parse_http_date(value)
        if since is not None and modified > since:
            return 412
    value = header(b"if-none-match")
    if value is not None:
        if _etag_listed(value, etag, strong=False):
            return 304 if method in _GET_HEAD else 412
    elif method in _GET_HEAD:
        value = header(b"if-modified-since")
        since = None if value is None else parse_http_date(value)
        if since is not None and modified <= since:
            return 304
    return 0


def _etag_listed(value: bytes, etag: bytes | None, *, strong: bool) -> bool:
    """Whether `etag` is in the If-Match/If-None-Match list `value` (or the list is `*`).

    Scans the quoted tags instead of splitting on commas, which may occur inside a tag.
    """
    if value.strip() == b"*":
        return True
    if etag is None:
        return False
    weak = etag.startswith(b"W/")
    if weak and strong:
        return False
    opaque = etag[2:] if weak else etag
    if opaque not in value:  # the common miss, without scanning
        return False
    pos, end = 0, len(value)
    while pos < end:
        if value[pos] in b" \t,":
            pos += 1
            continue
        tag_weak = value.startswith(b"W/", pos)
        start = pos + 2 if tag_weak else pos
        close = value.find(b'"', start + 1)
        if not value.startswith(b'"', start) or close < 0:
            return False  # malformed list: no match
        if value[start : close + 1] == opaque and not (strong and tag_weak):
            return True
        pos = close + 1
    return False


def _requested_pieces(
    method: bytes, header: Callable[[bytes], bytes | None], etag: bytes | None, modified: int, size: int
) -> list[tuple[int, int]] | None:
    """The ranges to answer with 206 ([] means 416), or None to send the whole file."""
    value = header(b"range")
    if value is None or method not in _GET_HEAD:
        return None
    if_range = header(b"if-range")
    if if_range is not None and not _if_range_holds(if_range, etag, modified):
        return None
    return _parse_range(value, size)


def _if_range_holds(value: bytes, etag: bytes | None, modified: int) -> bool:
    """If-Range needs a strong match: the exact strong ETag, or exactly the Last-Modified date."""
    if value.startswith(b'"'):
        return value == etag  # a weak etag starts with W/, so never equals it
    return parse_http_date(value) == modified  # W/"..." parses as no date: no match


def _parse_range(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """Sorted, coalesced (offset, length) pieces of a `bytes=` Range; [] if none is
    satisfiable, None if the header is malformed or asks for more than MAX_RANGES pieces.

    Coalescing means overlapping ranges can never make us send more than the file.
    """
    unit, eq, specs = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    pieces: list[tuple[int, int]] = []
    seen = 0
    try:
        for raw in specs.split(b","):
            spec = raw.strip(b" \t")
            if not spec:
                continue  # RFC 9110 §5.6.1: empty list elements are allowed
            seen += 1
            if seen > MAX_RANGES:
                return None
            start, stop = _spec_bounds(spec, size)
            if start < size and stop > start:
                pieces.append((start, min(stop, size) - start))
    except ValueError:
        return None
    if not seen:
        return None
    if len(pieces) < 2:
        return pieces
    pieces.sort()
    merged = [pieces[0]]
    for start, length in pieces[1:]:
        prev_start, prev_length = merged[-1]
        if start <= prev_start + prev_length:
            merged[-1] = (prev_start, max(prev_length, start + length - prev_start))
        else:
            merged.append((start, length))
    return merged


def _spec_bounds(spec: bytes, size: int) -> tuple[int, int]:
    """[start, stop) of one range-spec, possibly outside the file; ValueError if malformed
    (isdigit first: int() would also take signs, spaces and underscores)."""
    first, dash, last = spec.partition(b"-")
    if not dash or not (first + last).isdigit():  # both digits or empty, not both empty
        raise ValueError(spec)
    if not first:  # suffix-range: the last `last` bytes
        return max(size - int(last), 0), size
    start = int(first)
    if not last:
        return start, size
    stop = int(last) + 1
    if stop <= start:
        raise ValueError(spec)  # last < first is invalid, not unsatisfiable
    return start, stop


def _content_range(offset: int, length: int, size: int) -> bytes:
    return b"bytes %d-%d/%d" % (offset, offset + length - 1, size)


def _multipart_framing(
    boundary: bytes, pieces: list[tuple[int, int]], content_type: bytes, size: int
) -> list[bytes]:
    """multipart/byteranges framing (RFC 9110 §14.6): the bytes before each piece, then the close."""
    parts = [
        b"%s--%s\r\nContent-Type: %s\r\nContent-Range: %s\r\n\r\n"
        % (b"\r\n" if i else b"", boundary, content_type, _content_range(offset, length, size))
        for i, (offset, length) in enumerate(pieces)
    ]
    parts.append(b"\r\n--%s--\r\n" % boundary)
    return parts


def http_date(timestamp: float) -> bytes:
    """IMF-fixdate; whole seconds are cached, so Date and Last-Modified cost a dict hit."""
    return _http_date(math.floor(timestamp))


@lru_cache(maxsize=1024)
def _http_date(seconds: int) -> bytes:
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


@lru_cache(maxsize=256)
def parse_http_date(value: bytes) -> float | None:
    """Seconds since the epoch from an HTTP-date (IMF-fixdate, RFC 850 or asctime), else None.

    Cached: clients echo our Last-Modified back, so the same few values recur.
    """
    parsed = parsedate_tz(value.decode("latin-1"))
    if parsed is None:
        return None
    try:
        return float(calendar.timegm(parsed[:6]) - (parsed[9] or 0))
    except (ValueError, OverflowError):  # a year datetime cannot hold
        return None


def file_etag(size: int, mtime_ns: int, inode: int) -> bytes:
    """A strong validator from the file's identity; the inode catches a file replaced by one
    of equal size and mtime (rsync -a, cp -p)."""
    return b'"%x-%x-%x"' % (inode, mtime_ns, size)


def content_type_for(path: str) -> bytes:
    """Content-Type from the file extension; unknown -> application/octet-stream."""
    return _CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), b"application/octet-stream")


def resolve_under(root: str, url_path: bytes, allow_dotfiles: bool = False) -> str | None:
    """The real path of the regular file `url_path` names strictly inside `root` (already
    realpath'd), or None.

    Each segment is percent-decoded once and must then be a plain name: an encoded '/',
    '\\' or NUL, a '..', a dotfile or non-UTF-8 bytes refuse the whole path, whatever the
    encoding, rather than being normalised. Symlinks are followed, then the result must
    still lie under root. A directory serves its index.html.
    """
    path = url_path.partition(b"?")[0]
    if b"\\" in path or b"\0" in path:
        return None
    names = []
    for segment in path.split(b"/"):
        if b"%" in segment:
            segment = unquote_to_bytes(segment)
            if b"/" in segment or b"\\" in segment or b"\0" in segment:
                return None
        if not segment or segment == b".":
            continue
        if segment == b".." or (segment[0] == 0x2E and not allow_dotfiles):
            return None
        try:
            names.append(segment.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    target = os.path.join(root, *names)
    if os.path.isdir(target):
        target = os.path.join(target, "index.html")
    try:
        return _real_file_under(root, target)
    except OSError:
        return None


def _real_file_under(root: str, path: str) -> str | None:
    """`path` with symlinks resolved, if that is a regular file inside root."""
    real = os.path.realpath(path)
    if os.path.commonpath((root, real)) != root or not stat.S_ISREG(os.stat(real).st_mode):
        return None
    return real


def is_fingerprinted(name: str) -> bool:
    """Whether the file name carries a content digest (application-4b2f8e9a1c.css, app.4b2f8e9a.js),
    so its content never changes under this name. Hex only: digests in other alphabets are missed,
    which merely costs a short max-age."""
    return _FINGERPRINT.search(name.rpartition("/")[2]) is not None


def cache_control_for(name: str, short_max_age: int = 60) -> bytes:
    """Cache forever what cannot change under its name; revalidate everything else soon."""
    return IMMUTABLE if is_fingerprinted(name) else b"public, max-age=%d" % short_max_age


def precompressed_sibling(path: str, accepted: Callable[[bytes], bool]) -> tuple[str, bytes] | None:
    """The first of path.br, path.zst, path.gz that the client accepts and that is a regular
    file (not a symlink: `path` was vetted by resolve_under, the sibling was not)."""
    for encoding, suffix in PRECOMPRESSED:
        if not accepted(encoding):
            continue
        sibling = path + suffix
        try:
            mode = os.lstat(sibling).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            return sibling, encoding
    return None
