"""thruster.static: the file-serving decisions shared by X-Sendfile and `pythrust serve`."""

from __future__ import annotations

import email
import email.policy
import os
from pathlib import Path

import pytest

from thruster.static import (
    IMMUTABLE,
    MAX_RANGES,
    FilePlan,
    cache_control_for,
    content_type_for,
    file_etag,
    http_date,
    is_fingerprinted,
    parse_http_date,
    plan_file,
    precompressed_sibling,
    resolve_under,
)

BODY = bytes(range(33, 127)) + bytes(range(33, 39))  # 100 printable bytes, no CR/LF
SIZE = len(BODY)
MTIME = 784111777.25  # Sun, 06 Nov 1994 08:49:37.25 GMT
LAST_MODIFIED = b"Sun, 06 Nov 1994 08:49:37 GMT"
ETAG = b'"abc-1"'


def plan(
    method: bytes = b"GET",
    etag: bytes | None = ETAG,
    size: int = SIZE,
    cache_control: bytes | None = None,
    **request: bytes,
) -> FilePlan:
    """plan_file for BODY with request headers given as if_none_match=b"..." keywords."""
    headers = {name.replace("_", "-").encode(): value for name, value in request.items()}
    return plan_file(
        size,
        MTIME,
        method=method,
        header=headers.get,
        etag=etag,
        content_type=b"text/plain",
        cache_control=cache_control,
    )


def head(p: FilePlan) -> dict[bytes, bytes]:
    names = [name for name, _ in p.headers]
    assert len(names) == len(set(names)), "a header appears twice"
    return dict(p.headers)


def body(p: FilePlan) -> bytes:
    """What the caller would stream: the framing parts interleaved with the file ranges."""
    if not p.parts:
        return b"".join(BODY[offset : offset + length] for offset, length in p.ranges)
    assert len(p.parts) == len(p.ranges) + 1
    out = b""
    for part, (offset, length) in zip(p.parts, p.ranges, strict=False):
        out += part + BODY[offset : offset + length]
    return out + p.parts[-1]


# --- full responses and HEAD ---


def test_full_get_sends_the_whole_file_with_validators() -> None:
    p = plan()
    assert (p.status, p.ranges, p.parts) == (200, [(0, SIZE)], [])
    assert head(p) == {
        b"Accept-Ranges": b"bytes",
        b"Last-Modified": LAST_MODIFIED,
        b"ETag": ETAG,
        b"Content-Type": b"text/plain",
        b"Content-Length": b"100",
    }
    assert body(p) == BODY


def test_empty_file_sends_nothing() -> None:
    p = plan(size=0)
    assert (p.status, p.ranges, head(p)[b"Content-Length"]) == (200, [], b"0")


def test_no_etag_header_without_an_etag() -> None:
    assert b"ETag" not in head(plan(etag=None))


def test_head_gets_get_headers_and_no_body() -> None:
    p = plan(b"HEAD")
    assert (p.status, p.ranges, p.parts) == (200, [], [])
    assert p.headers == plan().headers


def test_cache_control_only_when_asked_and_not_on_errors() -> None:
    assert b"Cache-Control" not in head(plan())
    for request in ({}, {"range": b"bytes=0-0"}, {"range": b"bytes=0-0,5-6"}, {"if_none_match": ETAG}):
        assert head(plan(cache_control=IMMUTABLE, **request))[b"Cache-Control"] == IMMUTABLE
    for request in ({"range": b"bytes=500-"}, {"if_match": b'"other"'}):
        assert b"Cache-Control" not in head(plan(cache_control=IMMUTABLE, **request))


# --- single ranges ---


@pytest.mark.parametrize(
    ("spec", "offset", "length"),
    [
        (b"bytes=10-19", 10, 10),
        (b"bytes=90-", 90, 10),
        (b"bytes=-5", 95, 5),
        (b"bytes=95-1000", 95, 5),  # last clamped to the end
        (b"bytes=-1000", 0, 100),  # suffix longer than the file: all of it
        (b"BYTES=0-0", 0, 1),  # the unit is case-insensitive
        (b"bytes=500-,10-19", 10, 10),  # unsatisfiable pieces are dropped
        (b"bytes=0-9,5-14", 0, 15),  # overlapping: coalesced
        (b"bytes=0-9,10-19", 0, 20),  # adjacent: coalesced
    ],
)
def test_single_range(spec: bytes, offset: int, length: int) -> None:
    p = plan(range=spec)
    assert (p.status, p.ranges, p.parts) == (206, [(offset, length)], [])
    h = head(p)
    assert h[b"Content-Range"] == b"bytes %d-%d/100" % (offset, offset + length - 1)
    assert h[b"Content-Length"] == b"%d" % length
    assert h[b"Content-Type"] == b"text/plain"
    assert body(p) == BODY[offset : offset + length]


def test_head_with_range_gets_the_206_head_without_body() -> None:
    p = plan(b"HEAD", range=b"bytes=10-19")
    assert (p.status, p.ranges, head(p)[b"Content-Length"]) == (206, [], b"10")


def test_range_ignored_for_other_methods() -> None:
    assert plan(b"POST", range=b"bytes=10-19").status == 200


# --- multipart/byteranges ---


def test_multipart_byteranges_framing_parses_back() -> None:
    p = plan(range=b"bytes=50-59, -5,0-9")
    assert p.status == 206
    assert p.ranges == [(0, 10), (50, 10), (95, 5)]  # sorted
    h = head(p)
    data = body(p)
    assert int(h[b"Content-Length"]) == len(data)
    message = email.message_from_bytes(
        b"Content-Type: " + h[b"Content-Type"] + b"\r\n\r\n" + data, policy=email.policy.HTTP
    )
    assert message.get_content_type() == "multipart/byteranges"
    got = [(part["Content-Range"], part["Content-Type"], part.get_payload()) for part in message.iter_parts()]
    assert got == [
        ("bytes 0-9/100", "text/plain", BODY[0:10].decode()),
        ("bytes 50-59/100", "text/plain", BODY[50:60].decode()),
        ("bytes 95-99/100", "text/plain", BODY[95:100].decode()),
    ]
    assert data.endswith(b"--\r\n") and message.defects == []


def test_multipart_head_has_the_get_length() -> None:
    get, head_plan = plan(range=b"bytes=0-9,50-59"), plan(b"HEAD", range=b"bytes=0-9,50-59")
    assert (head_plan.ranges, head_plan.parts) == ([], [])
    assert head(head_plan)[b"Content-Length"] == head(get)[b"Content-Length"] == b"%d" % len(body(get))


def test_too_many_ranges_serve_the_whole_file() -> None:
    at_limit = b"bytes=" + b",".join(b"%d-%d" % (i * 4, i * 4) for i in range(MAX_RANGES))
    assert plan(range=at_limit).status == 206
    over = b"bytes=" + b",".join(b"%d-%d" % (i * 4, i * 4) for i in range(MAX_RANGES + 1))
    assert (plan(range=over).status, plan(range=over).ranges) == (200, [(0, SIZE)])


# --- 416 and malformed Range ---


@pytest.mark.parametrize("spec", [b"bytes=100-", b"bytes=500-600", b"bytes=-0", b"bytes=100-,200-"])
def test_unsatisfiable_range_is_416(spec: bytes) -> None:
    p = plan(range=spec)
    assert (p.status, p.ranges, p.parts) == (416, [], [])
    h = head(p)
    assert (h[b"Content-Range"], h[b"Content-Length"]) == (b"bytes */100", b"0")
    assert b"Content-Type" not in h


@pytest.mark.parametrize(
    "spec",
    [
        b"bytes=abc",
        b"bytes=5-2",
        b"bytes=1-2-3",
        b"bytes=-",
        b"bytes=",
        b"bytes=,",
        b"bytes=+1-2",
        b"bytes=1_0-20",
        b"bytes= 1 -2",
        b"items=0-1",
        b"0-1",
        b"bytes=0-1,x",
        b"bytes=" + b"9" * 5000 + b"-",
    ],
)
def test_malformed_range_is_ignored(spec: bytes) -> None:
    p = plan(range=spec)
    assert (p.status, p.ranges) == (200, [(0, SIZE)])
    assert b"Content-Range" not in head(p)


# --- If-Range ---


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        (ETAG, 206),
        (b'"other"', 200),
        (b"W/" + ETAG, 200),  # If-Range needs a strong match
        (LAST_MODIFIED, 206),
        (b"Sun, 06 Nov 1994 08:49:36 GMT", 200),
        (b"not a date", 200),
    ],
)
def test_if_range(if_range: bytes, status: int) -> None:
    assert plan(range=b"bytes=0-9", if_range=if_range).status == status


def test_if_range_with_a_weak_etag_never_matches() -> None:
    weak = b'W/"abc-1"'
    assert plan(etag=weak, range=b"bytes=0-9", if_range=weak).status == 200
    assert plan(etag=weak, range=b"bytes=0-9", if_range=ETAG).status == 200
    assert plan(etag=None, range=b"bytes=0-9", if_range=ETAG).status == 200


# --- conditional requests ---


@pytest.mark.parametrize(
    "if_none_match", [ETAG, b'W/"abc-1"', b'"x", "abc-1"', b'"x",W/"abc-1" , "y"', b"*", b'"a,b", "abc-1"']
)
def test_if_none_match_gives_304(if_none_match: bytes) -> None:
    p = plan(if_none_match=if_none_match, range=b"bytes=500-")
    assert (p.status, p.ranges, p.parts) == (304, [], [])
    h = head(p)
    assert (h[b"ETag"], h[b"Last-Modified"]) == (ETAG, LAST_MODIFIED)
    assert b"Content-Length" not in h and b"Content-Type" not in h


def test_if_none_match_weak_server_etag_compares_weakly() -> None:
    assert plan(etag=b'W/"abc-1"', if_none_match=ETAG).status == 304


@pytest.mark.parametrize("if_none_match", [b'"other"', b'"abc-1x"', b'"abc-1', b"abc-1"])
def test_if_none_match_miss_serves_200(if_none_match: bytes) -> None:
    assert plan(if_none_match=if_none_match).status == 200


def test_if_none_match_without_etag_only_matches_star() -> None:
    assert plan(etag=None, if_none_match=ETAG).status == 200
    assert plan(etag=None, if_none_match=b"*").status == 304


def test_if_none_match_on_post_is_412() -> None:
    assert plan(b"POST", if_none_match=ETAG).status == 412


def test_if_none_match_takes_precedence_over_if_modified_since() -> None:
    assert plan(if_none_match=b'"other"', if_modified_since=LAST_MODIFIED).status == 200


@pytest.mark.parametrize(
    ("since", "status"),
    [
        (LAST_MODIFIED, 304),  # equal at second precision though mtime has .25 s
        (b"Mon, 07 Nov 1994 00:00:00 GMT", 304),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", 304),  # RFC 850
        (b"Sun Nov  6 08:49:37 1994", 304),  # asctime
        (b"Sun, 06 Nov 1994 09:49:36 +0100", 200),  # an offset is applied
        (b"Sun, 06 Nov 1994 08:49:36 GMT", 200),
        (b"yesterday", 200),
    ],
)
def test_if_modified_since(since: bytes, status: int) -> None:
    assert plan(if_modified_since=since).status == status


def test_if_modified_since_ignored_for_post() -> None:
    assert plan(b"POST", if_modified_since=LAST_MODIFIED).status == 200


@pytest.mark.parametrize(
    ("if_match", "status"),
    [(ETAG, 200), (b'"x", "abc-1"', 200), (b"*", 200), (b'"other"', 412), (b'W/"abc-1"', 412)],
)
def test_if_match(if_match: bytes, status: int) -> None:
    p = plan(if_match=if_match)
    assert p.status == status
    if status == 412:
        assert (p.ranges, head(p)[b"Content-Length"]) == ([], b"0")


def test_if_match_uses_strong_comparison() -> None:
    assert plan(etag=b'W/"abc-1"', if_match=b'W/"abc-1"').status == 412
    assert plan(etag=b'W/"abc-1"', if_match=ETAG).status == 412
    assert plan(etag=None, if_match=ETAG).status == 412


def test_if_match_precedes_if_none_match() -> None:
    assert plan(if_match=b'"other"', if_none_match=ETAG).status == 412


@pytest.mark.parametrize(
    ("since", "status"), [(b"Sun, 06 Nov 1994 08:49:36 GMT", 412), (LAST_MODIFIED, 200), (b"junk", 200)]
)
def test_if_unmodified_since(since: bytes, status: int) -> None:
    assert plan(if_unmodified_since=since).status == status


def test_if_unmodified_since_ignored_under_if_match() -> None:
    assert plan(if_match=ETAG, if_unmodified_since=b"Sun, 06 Nov 1994 08:49:36 GMT").status == 200


# --- dates, etags, content types ---


def test_http_date_format_and_round_trip() -> None:
    assert http_date(MTIME) == LAST_MODIFIED
    assert http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
    for ts in (0, 784111777, 1709251199, 4102444800):
        assert parse_http_date(http_date(ts)) == ts


@pytest.mark.parametrize(
    "value", [b"", b"garbage", b"Sun, 06 Nov 1994", b"Sun, 06 Nov 99999999 08:49:37 GMT"]
)
def test_parse_http_date_rejects(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_file_etag_is_strong_and_quoted_and_tracks_identity() -> None:
    tag = file_etag(100, 1_000_000_000, 42)
    assert tag.startswith(b'"') and tag.endswith(b'"') and tag.count(b'"') == 2
    others = {
        file_etag(101, 1_000_000_000, 42),
        file_etag(100, 1_000_000_001, 42),
        file_etag(100, 1_000_000_000, 43),
    }
    assert tag not in others and len(others) == 3


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("index.html", b"text/html; charset=utf-8"),
        ("a/style.css", b"text/css; charset=utf-8"),
        ("app.js", b"text/javascript; charset=utf-8"),
        ("mod.mjs", b"text/javascript; charset=utf-8"),
        ("notes.txt", b"text/plain; charset=utf-8"),
        ("prog.wasm", b"application/wasm"),
        ("pic.webp", b"image/webp"),
        ("pic.avif", b"image/avif"),
        ("font.woff2", b"font/woff2"),
        ("LOGO.PNG", b"image/png"),
        ("data.json", b"application/json"),
        ("icon.svg", b"image/svg+xml"),
        ("archive.tar.gz", b"application/gzip"),
        ("blob.unknownext", b"application/octet-stream"),
        ("Makefile", b"application/octet-stream"),
    ],
)
def test_content_type_for(path: str, ctype: bytes) -> None:
    assert content_type_for(path) == ctype


# --- resolve_under ---


@pytest.fixture
def root(tmp_path: Path) -> str:
    """A served tree, plus a secret next to it and a directory outside it."""
    base = tmp_path / "root"
    for rel in ("index.html", "a/b/c.txt", "a b.txt", "docs/index.html", "etc/passwd", ".env", ".git/config"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(rel)
    (base / "empty").mkdir()
    (base / "x\\y.txt").write_text("backslash")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.txt").write_text("outside")
    (tmp_path / "outside" / "index.html").write_text("outside")
    os.symlink("/etc/passwd", base / "passwd")
    os.symlink(tmp_path / "outside", base / "out")
    os.symlink(base / "a" / "b" / "c.txt", base / "inner-link.txt")
    os.symlink(tmp_path / "secret.txt", base / "a" / "leak.txt")
    return os.path.realpath(base)


def test_resolve_finds_nested_files(root: str) -> None:
    assert resolve_under(root, b"/a/b/c.txt") == os.path.join(root, "a/b/c.txt")
    assert resolve_under(root, b"/a%20b.txt") == os.path.join(root, "a b.txt")
    assert resolve_under(root, b"/./a/./b/c.txt") == os.path.join(root, "a/b/c.txt")


def test_resolve_drops_the_query(root: str) -> None:
    assert resolve_under(root, b"/a/b/c.txt?v=1&x=/../../secret.txt") == os.path.join(root, "a/b/c.txt")


def test_resolve_directories_serve_index_html(root: str) -> None:
    assert resolve_under(root, b"/docs") == os.path.join(root, "docs/index.html")
    assert resolve_under(root, b"/docs/") == os.path.join(root, "docs/index.html")
    assert resolve_under(root, b"/") == os.path.join(root, "index.html")
    assert resolve_under(root, b"/empty/") is None


def test_resolve_missing_is_none(root: str) -> None:
    assert resolve_under(root, b"/nope.txt") is None


def test_resolve_refuses_non_regular_files(root: str) -> None:
    os.mkfifo(os.path.join(root, "fifo"))
    assert resolve_under(root, b"/fifo") is None


@pytest.mark.parametrize(
    "url",
    [
        b"/a/../a/b/c.txt",  # stays inside root, still refused
        b"/a/%2e%2e/a/b/c.txt",
        b"/a/%2E%2e/a/b/c.txt",
        b"/a/%2E%2E%2Fa/b/c.txt",
        b"/a/b/..%2fb/c.txt",
        b"/a%2fb/c.txt",
        b"/a%2Fb/c.txt",
        b"/x%5cy.txt",
        b"/x\\y.txt",
        b"/../secret.txt",  # escapes root
        b"/%2e%2e/secret.txt",
        b"/a/%2E%2E%2F%2E%2E%2Fsecret.txt",
        b"/a/..",
    ],
)
def test_resolve_refuses_traversal_and_encoded_separators(root: str, url: bytes) -> None:
    assert resolve_under(root, url) is None


@pytest.mark.parametrize(
    "url", [b"/a/b/c.txt%00", b"/a/b/c.txt%00.png", b"/a/b/c.txt\x00", b"/a\x00/b/c.txt"]
)
def test_resolve_refuses_nul(root: str, url: bytes) -> None:
    assert resolve_under(root, url) is None


def test_resolve_double_slash_stays_inside_root(root: str) -> None:
    assert resolve_under(root, b"//etc/passwd") == os.path.join(root, "etc/passwd")
    assert resolve_under(root, b"///a//b///c.txt") == os.path.join(root, "a/b/c.txt")


def test_resolve_refuses_symlinks_leaving_root(root: str) -> None:
    assert resolve_under(root, b"/passwd") is None
    assert resolve_under(root, b"/a/leak.txt") is None
    assert resolve_under(root, b"/out/f.txt") is None
    assert resolve_under(root, b"/out/") is None


def test_resolve_follows_symlinks_inside_root(root: str) -> None:
    assert resolve_under(root, b"/inner-link.txt") == os.path.join(root, "a/b/c.txt")


def test_resolve_dotfiles_only_when_allowed(root: str) -> None:
    for url in (b"/.env", b"/%2eenv", b"/.git/config", b"/%2Egit/config"):
        assert resolve_under(root, url) is None
    assert resolve_under(root, b"/.env", allow_dotfiles=True) == os.path.join(root, ".env")
    assert resolve_under(root, b"/%2egit/config", allow_dotfiles=True) == os.path.join(root, ".git/config")
    assert resolve_under(root, b"/.git/../.env", allow_dotfiles=True) is None


def test_resolve_refuses_non_utf8(root: str) -> None:
    raw_name = os.path.join(os.fsencode(root), b"\xff.txt")
    with open(raw_name, "wb") as f:
        f.write(b"latin")
    assert resolve_under(root, b"/%ff.txt") is None
    assert resolve_under(root, b"/\xff.txt") is None


# --- fingerprints and Cache-Control ---


@pytest.mark.parametrize(
    "name",
    [
        "application-4b2f8e9a1c.css",
        "app.4b2f8e9a.js",
        "logo-a1b2c3d4e5f60718.svg",
        "assets/application-6d6e4a8f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e.js",
        "chunk-4b2f8e9.digested.js",
        "app.4b2f8e9a.js.map",
    ],
)
def test_is_fingerprinted(name: str) -> None:
    assert is_fingerprinted(name)


@pytest.mark.parametrize(
    "name",
    [
        "report-2024.pdf",
        "report-20240115.pdf",  # a date: digits only
        "jquery-3.7.1.min.js",
        "application.css",
        "defaced-page.html",
        "style-effaced.css",  # letters only
        "app-4b2f8e9a",  # no extension: the digest must be followed by one
        "a1b2c3d4e5.js",  # no name before it
        "app-4B2F8E9A.js",  # digests are lower-case
        "app-4b2f8.js",  # too short
        "release-4b2f8e9a1c.d/plain.css",  # only the file name counts
    ],
)
def test_is_not_fingerprinted(name: str) -> None:
    assert not is_fingerprinted(name)


def test_cache_control_for() -> None:
    assert cache_control_for("/assets/app-4b2f8e9a1c.css") == b"public, max-age=31536000, immutable"
    assert cache_control_for("favicon.ico") == b"public, max-age=60"
    assert cache_control_for("favicon.ico", short_max_age=5) == b"public, max-age=5"


# --- precompressed siblings ---


@pytest.fixture
def asset(tmp_path: Path) -> str:
    for name in ("app.js", "app.js.br", "app.js.zst", "app.js.gz"):
        (tmp_path / name).write_text(name)
    return str(tmp_path / "app.js")


def test_precompressed_prefers_br_then_zstd_then_gzip(asset: str) -> None:
    assert precompressed_sibling(asset, lambda enc: True) == (asset + ".br", b"br")
    assert precompressed_sibling(asset, lambda enc: enc != b"br") == (asset + ".zst", b"zstd")
    assert precompressed_sibling(asset, lambda enc: enc == b"gzip") == (asset + ".gz", b"gzip")
    assert precompressed_sibling(asset, lambda enc: False) is None


def test_precompressed_skips_missing_siblings(asset: str) -> None:
    os.unlink(asset + ".br")
    assert precompressed_sibling(asset, lambda enc: True) == (asset + ".zst", b"zstd")
    os.unlink(asset + ".zst")
    os.unlink(asset + ".gz")
    assert precompressed_sibling(asset, lambda enc: True) is None


def test_precompressed_needs_a_regular_file_not_a_symlink(asset: str, tmp_path: Path) -> None:
    os.unlink(asset + ".br")
    os.mkdir(asset + ".br")
    os.unlink(asset + ".zst")
    os.symlink("/etc/passwd", asset + ".zst")
    assert precompressed_sibling(asset, lambda enc: True) == (asset + ".gz", b"gzip")
