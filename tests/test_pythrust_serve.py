"""`pythrust serve DIR`, a real process over real sockets: what a browser or a curl user sees.

DIR is tmp_path/www; tmp_path/secret.txt sits beside it and no request may reach it.
Requests go out as raw bytes, so odd request targets arrive exactly as written.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import brotli
import pytest
import zstandard

from tests.conftest import raw_request
from tests.h2client import H2Client
from tests.pythrust import ROOT

SECRET = b"TOP SECRET: the launch code is 7f3a-91c2\n"
TEXT = b"".join(b"line %05d of a compressible text file\n" % i for i in range(550))  # ~20 KB
BIG = 50 * 1024 * 1024
YEAR = "public, max-age=31536000, immutable"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers of a response head (without the blank line); repeated headers are joined."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(status_line.split()[1]), headers


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    return Reply(*parse_head(head), body)


def request_bytes(target: str, *headers: str, method: str = "GET", close: bool = True) -> bytes:
    """An HTTP/1.1 request with the target as written (never normalised) and `Name: value` headers."""
    lines = [f"{method} {target} HTTP/1.1", "Host: example.test", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def fetch(port: int, target: str, *headers: str, method: str = "GET") -> Reply:
    """One request on its own connection; the reply is read until the server closes."""
    return parse_reply(await raw_request(port, request_bytes(target, *headers, method=method)))


async def read_reply(reader: asyncio.StreamReader, method: str = "GET") -> Reply:
    """One reply on a kept-alive connection, its body framed by Content-Length."""
    status, headers = parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    has_body = method != "HEAD" and status not in (204, 304)
    length = int(headers.get("content-length", "0")) if has_body else 0
    return Reply(status, headers, await asyncio.wait_for(reader.readexactly(length), 5))


def put(root: Path, name: str, content: bytes) -> bytes:
    """Write `content` to root/name (making directories); returns the content."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


async def serve(start_pythrust: Callable, root: Path, **env: str) -> int:
    """Start `pythrust serve root` and return its HTTP port once it listens."""
    thrust = await start_pythrust("serve", str(root), **env)
    await thrust.wait_for_line('"Server started"')
    return thrust.http_port


def byteranges(reply: Reply) -> list[tuple[str, bytes]]:
    """(Content-Range, bytes) of each part of a multipart/byteranges body, checking its framing."""
    media_type, _, boundary = reply.headers["content-type"].partition("; boundary=")
    assert media_type == "multipart/byteranges" and boundary
    delimiter = b"\r\n--" + boundary.encode()
    first, *parts, last = (b"\r\n" + reply.body).split(delimiter)
    assert first == b"" and last == b"--\r\n", "multipart framing"
    ranges = []
    for part in parts:
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        ranges.append((parse_head(b"HTTP/1.1 206\r\n" + head)[1]["content-range"], data))
    return ranges


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """DIR, with an index.html; the secret lies beside it, outside."""
    put(tmp_path, "secret.txt", SECRET)
    root = tmp_path / "www"
    put(root, "index.html", b"<h1>home</h1>\n")
    return root


# -- 1. Nothing outside DIR, no dotfiles --------------------------------------------------------

TRAVERSALS = [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2e%2fsecret.txt",
    "/..%2fsecret.txt",
    "/sub/..%2f..%2fsecret.txt",
    "/%00",
    "/index.html%00.txt",
    "//etc/passwd",
    "/..\\secret.txt",
    "/%5c..%5csecret.txt",
    "http://a/../secret.txt",
    "/leak.txt",  # a symlink in DIR to the secret
    "/outside/secret.txt",  # a symlinked directory in DIR to DIR's parent
]


async def test_no_request_target_reaches_a_file_outside_dir(start_pythrust, www, tmp_path):
    put(www, "sub/page.html", b"<p>sub</p>")
    (www / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (www / "outside").symlink_to(tmp_path, target_is_directory=True)
    port = await serve(start_pythrust, www)
    assert (await fetch(port, "/sub/page.html")).status == 200  # the server does serve files
    answers = {target: await raw_request(port, request_bytes(target)) for target in TRAVERSALS}
    wrong = {
        target: raw.partition(b"\r\n")[0]
        for target, raw in answers.items()
        if not raw.startswith(b"HTTP/1.1 404 ") or SECRET in raw or b"root:" in raw
    }
    assert wrong == {}, "each must be a 404 without the secret"


async def test_dotfiles_are_hidden_unless_serve_dotfiles(start_pythrust, www):
    dotfiles = {
        "/.env": put(www, ".env", b"API_KEY=abc123\n"),
        "/.git/config": put(www, ".git/config", b"[core]\n"),
    }
    hiding = await serve(start_pythrust, www)
    showing = await serve(start_pythrust, www, SERVE_DOTFILES="true")
    for target, content in dotfiles.items():
        hidden = await fetch(hiding, target)
        assert hidden.status == 404 and content not in hidden.body, target
        shown = await fetch(showing, target)
        assert (shown.status, shown.body) == (200, content), target


# -- 2. Directories, types, lengths ----------------------------------------------------------------


async def test_a_directory_serves_its_index_after_a_slash_redirect(start_pythrust, www):
    index = put(www, "docs/index.html", b"<h1>docs</h1>\n")
    (www / "empty").mkdir()
    port = await serve(start_pythrust, www)
    slashed = await fetch(port, "/docs/")
    assert (slashed.status, slashed.body) == (200, index)
    assert slashed.headers["content-type"].lower() == "text/html; charset=utf-8"
    unslashed = await fetch(port, "/docs")
    assert unslashed.status == 301 and unslashed.headers["location"] == "/docs/"
    assert (await fetch(port, "/empty/")).status == 404
    assert (await fetch(port, "/empty")).status == 404


async def test_the_slash_redirect_never_leaves_the_site(start_pythrust, www):
    put(www, "evil.example/index.html", b"a directory named like a host\n")
    port = await serve(start_pythrust, www)
    redirect = await fetch(port, "//evil.example")
    assert redirect.status == 301
    assert redirect.headers["location"] == "/evil.example/", "//host would send the browser to that host"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("assets/css/site.css", "text/css; charset=utf-8"),
        ("assets/js/app.js", "text/javascript; charset=utf-8"),
        ("assets/img/logo.svg", "image/svg+xml"),
        ("pages/about/team.html", "text/html; charset=utf-8"),
    ],
)
async def test_a_nested_file_has_its_type_and_length(start_pythrust, www, name, content_type):
    content = put(www, name, b"/* %s */\n" % name.encode() * 10)
    port = await serve(start_pythrust, www)
    for target in (f"/{name}", f"/{name}?v=3&x=%2e%2e"):
        reply = await fetch(port, target)
        assert (reply.status, reply.body) == (200, content), target
        assert reply.headers["content-type"].lower() == content_type
        assert reply.headers["content-length"] == str(len(content))


# -- 3. Validators, ranges, methods -------------------------------------------------------------


async def test_validators_give_304_and_an_edited_file_is_served_fresh(start_pythrust, www):
    path = www / "page.html"
    put(www, "page.html", b"<p>version one</p>")
    port = await serve(start_pythrust, www)
    first = await fetch(port, "/page.html")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for validator in (f"If-None-Match: {etag}", f"If-Modified-Since: {modified}"):
        unchanged = await fetch(port, "/page.html", validator)
        assert (unchanged.status, unchanged.body) == (304, b""), validator

    edited = put(www, "page.html", b"<p>version two</p>")  # same length: only the identity tells
    later = path.stat().st_mtime + 10
    os.utime(path, (later, later))
    for validator in (f"If-None-Match: {etag}", f"If-Modified-Since: {modified}"):
        fresh = await fetch(port, "/page.html", validator)
        assert (fresh.status, fresh.body) == (200, edited), validator
        assert fresh.headers["etag"] != etag


async def test_repeated_requests_on_kept_connections_see_each_edit_at_once(start_pythrust, www):
    """Repeats of a request are answered from a kept answer (proxy/http/replay.py): never stale."""
    path = www / "app.css"
    original = put(www, "app.css", b"body { color: red }")
    port = await serve(start_pythrust, www)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = request_bytes("/app.css", close=False)

    async def get() -> Reply:
        writer.write(request)
        return await read_reply(reader)

    try:
        for _ in range(3):  # made, held, then answered as a repeat
            assert (await get()).body == original
        edited = put(www, "app.css", b"body { color: tan }")
        later = path.stat().st_mtime + 10
        os.utime(path, (later, later))
        assert (await get()).body == edited
        assert (await get()).body == edited
        swapped = www / "app.css.new"  # a deploy's way: a new file renamed over the old
        swapped.write_bytes(b"body { color: blue }")
        os.replace(swapped, path)
        assert (await get()).body == b"body { color: blue }"
        assert (await get()).body == b"body { color: blue }"
        path.unlink()
        assert (await get()).status == 404
    finally:
        writer.close()


async def test_ranges_single_multiple_and_unsatisfiable(start_pythrust, www):
    content = put(www, "notes.txt", TEXT)
    size = len(content)
    port = await serve(start_pythrust, www)

    single = await fetch(port, "/notes.txt", "Range: bytes=100-199")
    assert (single.status, single.body) == (206, content[100:200])
    assert single.headers["content-range"] == f"bytes 100-199/{size}"
    assert single.headers["content-length"] == "100"

    multi = await fetch(port, "/notes.txt", "Range: bytes=0-9, 1000-1019, -5")
    assert multi.status == 206 and multi.headers["content-length"] == str(len(multi.body))
    assert byteranges(multi) == [
        (f"bytes 0-9/{size}", content[:10]),
        (f"bytes 1000-1019/{size}", content[1000:1020]),
        (f"bytes {size - 5}-{size - 1}/{size}", content[-5:]),
    ]

    unsatisfiable = await fetch(port, "/notes.txt", f"Range: bytes={size}-")
    assert unsatisfiable.status == 416 and unsatisfiable.headers["content-range"] == f"bytes */{size}"
    assert content[:100] not in unsatisfiable.body


async def test_head_has_the_headers_without_a_body(start_pythrust, www):
    small, large = put(www, "small.txt", b"tiny\n"), put(www, "large.txt", TEXT * 5)  # memory / sendfile
    port = await serve(start_pythrust, www)
    for name, content in (("small.txt", small), ("large.txt", large)):
        head = await fetch(port, f"/{name}", method="HEAD")
        assert (head.status, head.body) == (200, b""), name
        assert head.headers["content-length"] == str(len(content))
        assert head.headers["content-type"].startswith("text/plain")


async def test_other_methods_get_405_naming_the_allowed_ones(start_pythrust, www):
    content = put(www, "small.txt", b"tiny\n")
    port = await serve(start_pythrust, www)
    for method in ("POST", "PUT", "DELETE"):
        raw = await raw_request(port, request_bytes("/small.txt", "Content-Length: 0", method=method))
        refused = parse_reply(raw)
        assert refused.status == 405 and content not in raw, method
        allowed = {m.strip() for m in refused.headers.get("allow", "").split(",")}
        assert {"GET", "HEAD"} <= allowed, f"{method}: a 405 must say what is allowed (RFC 9110 15.5.6)"


# -- 4. Cache-Control ---------------------------------------------------------------------------


async def test_fingerprinted_names_are_cached_for_a_year_others_briefly(start_pythrust, www):
    for name in ("app-4b2f8e9a1c.css", "logo.4b2f8e9a.svg", "style.css"):
        put(www, name, b"x")
    port = await serve(start_pythrust, www)
    for name in ("app-4b2f8e9a1c.css", "logo.4b2f8e9a.svg"):
        assert (await fetch(port, f"/{name}")).headers["cache-control"] == YEAR, name
    brief = (await fetch(port, "/style.css")).headers["cache-control"]
    directives = [directive.strip() for directive in brief.split(",")]
    max_age = next(int(d.removeprefix("max-age=")) for d in directives if d.startswith("max-age="))
    assert 0 < max_age < 86400 and "immutable" not in directives, brief


# -- 5. Compression -----------------------------------------------------------------------------


async def test_a_precompressed_sibling_is_served_to_a_client_that_accepts_it(start_pythrust, www):
    script = put(www, "big.js", b"export const greeting = 'hello';\n" * 600)
    siblings = {
        "br": put(www, "big.js.br", brotli.compress(script, quality=11)),
        "gzip": put(www, "big.js.gz", gzip.compress(script, mtime=12345)),
    }
    port = await serve(start_pythrust, www)
    cases = [
        ("br", "br"),
        ("gzip", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("zstd, gzip", "gzip"),  # no .zst: the next accepted sibling
        ("identity", None),
        (None, None),  # no Accept-Encoding at all
    ]
    for accept, encoding in cases:
        reply = await fetch(port, "/big.js", *([f"Accept-Encoding: {accept}"] if accept else []))
        assert reply.status == 200, accept
        assert reply.headers.get("content-encoding") == encoding, accept
        assert reply.body == (siblings[encoding] if encoding else script), accept
        assert reply.headers["content-length"] == str(len(reply.body))
        assert reply.headers["content-type"].startswith("text/javascript"), accept
        assert "accept-encoding" in reply.headers.get("vary", "").lower(), accept


DECODERS = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda body: zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(body),
}


async def test_a_text_file_without_siblings_is_compressed_on_the_fly(start_pythrust, www):
    text = put(www, "notes.txt", TEXT)
    port = await serve(start_pythrust, www)
    for encoding, decode in DECODERS.items():
        for attempt in ("made", "kept"):  # compressed once, then from the cache
            reply = await fetch(port, "/notes.txt", f"Accept-Encoding: {encoding}")
            assert reply.headers.get("content-encoding") == encoding, (encoding, attempt)
            assert len(reply.body) < len(text) and decode(reply.body) == text, (encoding, attempt)
            assert reply.headers["content-type"].startswith("text/plain")


async def test_a_png_is_never_compressed(start_pythrust, www):
    image = put(www, "pixel.png", b"\x89PNG\r\n\x1a\n" + bytes(20_000))  # compressible bytes, but a PNG
    port = await serve(start_pythrust, www)
    reply = await fetch(port, "/pixel.png", "Accept-Encoding: gzip, br, zstd")
    assert reply.headers["content-type"] == "image/png"
    assert "content-encoding" not in reply.headers and reply.body == image


async def test_a_range_request_gets_identity_bytes(start_pythrust, www):
    files = {"notes.txt": put(www, "notes.txt", TEXT), "big.js": put(www, "big.js", TEXT)}
    put(www, "big.js.gz", gzip.compress(TEXT))
    put(www, "big.js.br", brotli.compress(TEXT))
    port = await serve(start_pythrust, www)
    for name, content in files.items():
        reply = await fetch(port, f"/{name}", "Accept-Encoding: gzip, br, zstd", "Range: bytes=50-149")
        assert (reply.status, reply.body) == (206, content[50:150]), name
        assert "content-encoding" not in reply.headers, name
        assert reply.headers["content-range"] == f"bytes 50-149/{len(content)}", name


# -- 6. Large files and keep-alive --------------------------------------------------------------


def sparse_big_file(root: Path) -> bytes:
    """A 50 MB sparse file at root/big.bin ending in a marker; returns the marker."""
    marker = b"--the end--"
    with open(root / "big.bin", "wb") as file:
        file.truncate(BIG - len(marker))
        file.seek(0, os.SEEK_END)
        file.write(marker)
    return marker


async def test_a_50_mb_file_downloads_whole_over_http1(start_pythrust, www):
    marker = sparse_big_file(www)
    port = await serve(start_pythrust, www)
    reply = await fetch(port, "/big.bin")
    assert reply.status == 200 and reply.headers["content-length"] == str(BIG)
    assert len(reply.body) == BIG and reply.body.endswith(marker)


async def test_a_50_mb_file_downloads_whole_over_h2c(start_pythrust, www):
    marker = sparse_big_file(www)
    port = await serve(start_pythrust, www, H2C_ENABLED="true")
    client = await H2Client.connect(port, "example.test", None)
    try:
        reply = await client.get("/big.bin")
    finally:
        await client.close()
    assert reply.status == 200 and reply.headers[b"content-length"] == str(BIG).encode()
    assert len(reply.body) == BIG and reply.body.endswith(marker)


async def test_a_small_file_asked_for_again_and_again_over_h2c(start_pythrust, www):
    """Repeats over HTTP/2 take the held response too (an HTTP/1.1 repeat would be replayed)."""
    small = put(www, "small.txt", b"tiny\n")
    port = await serve(start_pythrust, www, H2C_ENABLED="true")
    client = await H2Client.connect(port, "example.test", None)
    try:
        replies = [await client.get("/small.txt") for _ in range(4)]
    finally:
        await client.close()
    assert [(reply.status, reply.body) for reply in replies] == [(200, small)] * 4


async def test_one_connection_carries_several_requests(start_pythrust, www):
    small, large = put(www, "small.txt", b"tiny\n"), put(www, "large.txt", TEXT * 5)
    port = await serve(start_pythrust, www)
    etag = (await fetch(port, "/small.txt")).headers["etag"]
    steps = [
        ("GET", "/small.txt", (), 200, small),
        ("GET", "/large.txt", (), 200, large),  # sent from disk
        ("HEAD", "/large.txt", (), 200, b""),
        ("GET", "/small.txt", ("Range: bytes=1-2",), 206, small[1:3]),
        ("GET", "/small.txt", (f"If-None-Match: {etag}",), 304, b""),
        ("GET", "/small.txt", (), 200, small),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for method, target, headers, status, body in steps:
            writer.write(request_bytes(target, *headers, method=method, close=False))
            reply = await read_reply(reader, method)
            assert reply.status == status, (method, target, headers)
            assert reply.body == body, (method, target, headers)
    finally:
        writer.close()


# -- 7. The command line ------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [[], ["nonexistent"], ["file.txt"]], ids=["none", "missing", "file"])
def test_serve_without_a_directory_exits_2_with_one_line_on_stderr(tmp_path, arguments):
    put(tmp_path, "file.txt", b"not a directory")
    finished = subprocess.run(
        [sys.executable, "-m", "thruster", "serve", *arguments],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HTTP_PORT": "0"},
        capture_output=True,
        timeout=10,
    )
    assert finished.returncode == 2
    assert finished.stderr.count(b"\n") == 1 and finished.stderr.strip(), finished.stderr
