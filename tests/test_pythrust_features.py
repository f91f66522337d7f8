"""pythrust's features end to end, in front of a real Flask app (tests/apps/feature_app.py):
X-Sendfile (and its roots), the cache, compression, event streams and the write timeout.

Every request goes over a real socket and is read byte for byte: bodies are de-chunked here but
never decoded by a library, so what is asserted is what a client receives.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import socket
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import brotli
import h2.events
import h2.settings
import pytest
import zstandard

from tests.h2client import H2Client
from tests.pythrust import APPS, Pythrust

HOST = "app.test"
GIB = 1024**3
MB = 1000**2
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
TEXT = b"".join(b"line %05d of a file pythrust sends\n" % n for n in range(2000))  # 70 kB, no CR


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes  # de-chunked, still encoded

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), None when absent."""
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated items of a list header, lower-cased."""
        values = (value for key, value in self.headers if key.lower() == name.lower())
        return {item.strip().lower() for value in values for item in value.split(",")}


def url(route: str, **params: object) -> str:
    """`route` with a query (escaped) of `params`."""
    return f"{route}?{urlencode(params)}"


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` zeros that takes no disk: one hole."""
    with open(path, "wb") as file:
        file.truncate(size)
    return path


async def open_request(
    thrust: Pythrust,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str = HOST,
    sock: socket.socket | None = None,
) -> Connection:
    """A new connection (or `sock`, already connected) with one HTTP/1.1 request sent on it."""
    if sock is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", thrust.http_port)
    else:
        reader, writer = await asyncio.open_connection(sock=sock)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    return reader, writer


async def read_head(reader: asyncio.StreamReader) -> Response:
    """The status line and headers of a response, its body not read yet."""
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return Response(int(status_line.split()[1]), headers, b"")


async def body_pieces(reader: asyncio.StreamReader, head: Response) -> AsyncIterator[bytes]:
    """The body as it arrives: chunks de-chunked, else everything up to the end of the connection."""
    if head.header("Transfer-Encoding") != "chunked":
        while piece := await reader.read(1 << 20):
            yield piece
        return
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        yield await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"
    assert await reader.readuntil(b"\r\n") == b"\r\n", "no trailers expected"


async def fetch(
    thrust: Pythrust,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str = HOST,
) -> Response:
    """One request on its own connection; the whole response, as sent."""
    async with asyncio.timeout(10):
        reader, writer = await open_request(thrust, path, method, headers, host)
        try:
            head = await read_head(reader)
            if method == "HEAD" or head.status == 304:
                head.body = await reader.read()  # must stay empty
            else:
                head.body = b"".join([piece async for piece in body_pieces(reader, head)])
            return head
        finally:
            writer.close()


def decoded(response: Response) -> bytes:
    """The body as a client decodes it, per its Content-Encoding."""
    encoding = response.header("Content-Encoding")
    if encoding is None:
        return response.body
    if encoding == "gzip":
        return gzip.decompress(response.body)
    if encoding == "zstd":  # the jitter padding is a skippable frame after the data
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(response.body)
    if encoding == "br":
        return brotli.decompress(response.body)
    raise AssertionError(f"unexpected Content-Encoding {encoding}")


@pytest.fixture
def start_app(start_pythrust) -> Callable:
    """Start pythrust in front of feature_app.py with `env`, ready to answer."""

    async def start(**env: str) -> Pythrust:
        thrust = await start_pythrust(sys.executable, str(APPS / "feature_app.py"), **env)
        await thrust.wait_for_line("app listening")
        return thrust

    return start


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.txt"
    path.write_bytes(TEXT)
    return path


# X-Sendfile


async def test_send_file_serves_the_file_under_the_apps_headers(start_app, text_file):
    thrust = await start_app()
    response = await fetch(thrust, url("/file", path=text_file))
    assert response.status == 200
    assert response.body == TEXT
    assert response.header("Content-Length") == str(len(TEXT))
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    flask_etag = f'"{text_file.stat().st_mtime}-{len(TEXT)}-{zlib.adler32(str(text_file).encode())}"'
    assert response.header("ETag") == flask_etag, "the app's ETag is kept"
    assert not response.has("X-Sendfile")

    download = await fetch(thrust, url("/download", path=text_file, name="q3.txt"))
    assert download.body == TEXT
    assert download.header("Content-Disposition") == "attachment; filename=q3.txt"
    assert not download.has("X-Sendfile")


async def test_a_precompressed_asset_gets_its_real_length_and_keeps_its_encoding(start_app, tmp_path):
    asset = tmp_path / "app.js.gz"
    asset.write_bytes(gzip.compress(b"console.log('hello');\n" * 500, mtime=0))
    thrust = await start_app()
    response = await fetch(
        thrust, url("/sendfile", path=asset, encoding="gzip"), headers={"Accept-Encoding": "gzip"}
    )
    assert response.status == 200
    assert response.header("Content-Length") == str(asset.stat().st_size), "not the app's 0"
    assert response.header("Content-Encoding") == "gzip"
    assert response.body == asset.read_bytes(), "sent as stored, not compressed again"
    assert not response.has("X-Sendfile")


def byteranges(response: Response) -> list[tuple[int, int, bytes]]:
    """The (first, last, data) of each part of a multipart/byteranges body."""
    boundary = re.fullmatch(r'multipart/byteranges; boundary="?([^"]+)"?', response.header("Content-Type"))
    assert boundary, response.header("Content-Type")
    parts = []
    for part in response.body.split(b"--" + boundary.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        content_range = re.search(rb"(?i)content-range: bytes (\d+)-(\d+)/(\d+)", head)
        assert content_range and int(content_range.group(3)) == len(TEXT), head
        parts.append((int(content_range.group(1)), int(content_range.group(2)), data.removesuffix(b"\r\n")))
    return parts


async def test_sendfile_answers_range_requests(start_app, text_file):
    thrust = await start_app()
    path = url("/sendfile", path=text_file)
    single = await fetch(thrust, path, headers={"Range": "bytes=100-149"})
    assert single.status == 206
    assert single.header("Content-Range") == f"bytes 100-149/{len(TEXT)}"
    assert single.body == TEXT[100:150]
    assert single.header("Content-Length") == "50"

    multiple = await fetch(thrust, path, headers={"Range": "bytes=0-9,1000-1099,-20"})
    assert multiple.status == 206
    assert byteranges(multiple) == [
        (0, 9, TEXT[:10]),
        (1000, 1099, TEXT[1000:1100]),
        (len(TEXT) - 20, len(TEXT) - 1, TEXT[-20:]),
    ]

    beyond = await fetch(thrust, path, headers={"Range": f"bytes={len(TEXT) + 10}-"})
    assert beyond.status == 416
    assert beyond.header("Content-Range") == f"bytes */{len(TEXT)}"
    assert TEXT[:100] not in beyond.body


async def test_sendfile_answers_head_and_conditional_requests(start_app, text_file):
    thrust = await start_app()
    path = url("/sendfile", path=text_file)  # the app says Content-Length: 0 and no more
    head = await fetch(thrust, path, method="HEAD")
    assert head.status == 200
    assert head.header("Content-Length") == str(len(TEXT))
    assert head.has("Last-Modified")
    assert head.body == b""

    full = await fetch(thrust, path)
    assert full.body == TEXT and full.has("ETag") and full.has("Last-Modified")
    for name, validator in (("If-None-Match", "ETag"), ("If-Modified-Since", "Last-Modified")):
        not_modified = await fetch(thrust, path, headers={name: full.header(validator)})
        assert not_modified.status == 304, name
        assert not_modified.body == b""


async def test_sendfile_of_a_missing_file_is_404(start_app, tmp_path):
    thrust = await start_app()
    response = await fetch(thrust, url("/sendfile", path=tmp_path / "gone.txt"))
    assert response.status == 404


async def test_sendfile_roots_confine_the_files_the_app_may_name(start_app, tmp_path):
    public, assets, sibling = tmp_path / "public", tmp_path / "assets", tmp_path / "public2"
    for directory in (public, assets, sibling):
        directory.mkdir()
    (public / "inside.txt").write_bytes(b"public file")
    (assets / "inside.txt").write_bytes(b"assets file")
    secret = b"TOP SECRET 4242"
    (tmp_path / "secret.txt").write_bytes(secret)
    (sibling / "secret.txt").write_bytes(secret)
    (public / "link.txt").symlink_to(tmp_path / "secret.txt")
    thrust = await start_app(X_SENDFILE_ROOTS=f"{public}:{assets}")

    for directory in (public, assets):
        served = await fetch(thrust, url("/file", path=directory / "inside.txt"))
        assert (served.status, served.body) == (200, directory.name.encode() + b" file")
    for outside in (tmp_path / "secret.txt", sibling / "secret.txt", public / "link.txt"):
        refused = await fetch(thrust, url("/file", path=outside))
        assert refused.status == 500, outside
        assert secret not in refused.body
    await thrust.wait_for_line("outside X_SENDFILE_ROOTS")
    assert not any(secret.decode() in line for line in thrust.lines)


async def app_headers(thrust: Pythrust, headers: dict[str, str]) -> dict[str, str]:
    """The request headers the app received (lower-cased names)."""
    response = await fetch(thrust, "/headers", headers=headers)
    return {name.lower(): value for name, value in json.loads(response.body).items()}


async def test_pythrust_alone_tells_the_app_the_sendfile_type(start_app):
    thrust = await start_app()
    received = await app_headers(thrust, {"X-Sendfile-Type": "X-Accel-Redirect"})
    assert received["x-sendfile-type"] == "X-Sendfile"


async def test_disabled_sendfile_drops_a_sendfile_type_the_client_sent(start_app):
    thrust = await start_app(X_SENDFILE_ENABLED="false")
    received = await app_headers(thrust, {"X-Sendfile-Type": "X-Sendfile"})
    assert "x-sendfile-type" not in received


# X-Accel-Redirect


async def test_accel_redirect_serves_the_file_behind_a_mapped_uri(start_app, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "report one.txt").write_bytes(TEXT)
    (storage / "über.txt").write_text("a name in UTF-8")
    thrust = await start_app(X_ACCEL_MAPPING=f"{storage}/=/files/")
    told = await app_headers(thrust, {"X-Accel-Mapping": "/=/everything/", "X-Sendfile-Type": "X-Sendfile"})
    assert told["x-sendfile-type"] == "X-Accel-Redirect"
    assert told["x-accel-mapping"] == f"{storage}/=/files/", "the client's own mapping never reaches the app"

    served = await fetch(
        thrust, url("/accel", uri="/files/report%20one.txt"), headers={"Accept-Encoding": "identity"}
    )
    assert (served.status, served.body) == (200, TEXT)
    assert served.header("Content-Length") == str(len(TEXT)) and not served.has("X-Accel-Redirect")
    ranged = await fetch(thrust, url("/accel", uri="/files/report%20one.txt"), headers={"Range": "bytes=0-9"})
    assert (ranged.status, ranged.body) == (206, TEXT[:10])
    named = await fetch(thrust, url("/accel", uri="/files/" + quote("über.txt")))
    assert (named.status, named.body) == (200, b"a name in UTF-8")
    assert (await fetch(thrust, url("/accel", uri="/files/missing.txt"))).status == 404


async def test_accel_redirect_never_leaves_its_directory(start_app, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "inside.txt").write_text("inside")
    secret = b"TOP SECRET 5151"
    (tmp_path / "secret.txt").write_bytes(secret)
    (storage / "link.txt").symlink_to(tmp_path / "secret.txt")
    thrust = await start_app(X_ACCEL_MAPPING=f"{storage}=/files", X_SENDFILE_ROOTS=str(storage))
    assert (await fetch(thrust, url("/accel", uri="/files/inside.txt"))).body == b"inside"
    for uri in (
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/..%2fsecret.txt",
        "/files/sub/../../secret.txt",
        "/files/inside.txt%00.png",
        "/elsewhere/secret.txt",
        "/files/link.txt",  # a symlink out, refused by X_SENDFILE_ROOTS (which holds the mapped directory)
    ):
        refused = await fetch(thrust, url("/accel", uri=uri))
        assert refused.status == 500, uri
        assert secret not in refused.body
    await thrust.wait_for_line("X-Accel-Redirect outside X_ACCEL_MAPPING")
    await thrust.wait_for_line("outside X_SENDFILE_ROOTS")


async def test_a_mapping_entry_that_does_not_parse_is_named_in_the_log(start_app, tmp_path):
    thrust = await start_app(X_ACCEL_MAPPING=f"relative=/files/, {tmp_path}=/files/")
    await thrust.wait_for_line("X_ACCEL_MAPPING entry ignored.*relative=/files/")
    told = await app_headers(thrust, {})
    assert told["x-accel-mapping"] == f"{tmp_path}/=/files/"


# Large files in bounded memory


SAMPLE_EVERY = 32 << 20  # bytes received between two looks at pythrust's memory


def resident_bytes(pid: int) -> int:
    """VmRSS of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


@dataclass
class TransferWatch:
    """The bytes a client has received, and pythrust's resident memory when they began and at its peak."""

    pid: int
    received: int = 0
    start: int = field(init=False)
    peak: int = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.peak = resident_bytes(self.pid)

    def count(self, size: int) -> None:
        if self.received // SAMPLE_EVERY != (self.received + size) // SAMPLE_EVERY:
            self.sample()
        self.received += size

    def sample(self) -> None:
        self.peak = max(self.peak, resident_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start


async def app_with_a_sparse_gib(start_app, tmp_path: Path, **env: str) -> tuple[Pythrust, str, str]:
    """pythrust, the URL of a 1 GiB file (a hole: reads as zeros) and of a small one to warm up with."""
    big = sparse_file(tmp_path / "big.bin", GIB)
    small = tmp_path / "small.bin"
    small.write_bytes(b"warm up " * 1000)
    return await start_app(**env), url("/file", path=big), url("/file", path=small)


def assert_whole_and_lean(watch: TransferWatch) -> None:
    """The client got all of the 1 GiB, and pythrust's memory never grew by anything like it."""
    watch.sample()
    assert watch.received == GIB
    assert watch.growth < 20 * MB, f"pythrust grew by {watch.growth / MB:.1f} MB"


async def test_a_1gib_file_streams_over_http1_in_bounded_memory(start_app, tmp_path):
    thrust, path, warm_up = await app_with_a_sparse_gib(start_app, tmp_path)
    assert (await fetch(thrust, warm_up)).status == 200
    watch = TransferWatch(thrust.process.pid)
    async with asyncio.timeout(120):
        reader, writer = await open_request(thrust, path)
        head = await read_head(reader)
        assert head.status == 200 and head.header("Content-Length") == str(GIB)
        while piece := await reader.read(1 << 20):
            watch.count(len(piece))
        writer.close()
    assert_whole_and_lean(watch)


class CountingH2Client(H2Client):
    """An H2Client that, once given a watch, counts the DATA it gets instead of keeping it."""

    watch: TransferWatch | None = None

    def _handle(self, event: h2.events.Event) -> None:
        if self.watch is None or not isinstance(event, h2.events.DataReceived):
            super()._handle(event)
            return
        self.watch.count(len(event.data))
        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)


async def test_a_1gib_file_streams_over_h2c_in_bounded_memory(start_app, tmp_path):
    thrust, path, warm_up = await app_with_a_sparse_gib(start_app, tmp_path, H2C_ENABLED="true")
    client = await CountingH2Client.connect(thrust.http_port, HOST, None)
    window = 32 << 20  # the stream and connection windows curl 7 announces
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.conn.increment_flow_control_window(window)
    client.flush()
    try:
        assert (await client.get(warm_up)).status == 200
        client.watch = watch = TransferWatch(thrust.process.pid)
        stream = client.start(path)
        await asyncio.wait_for(client.streams[stream].done.wait(), 180)
        assert client.streams[stream].status == 200
        assert dict(client.streams[stream].headers)[b"content-length"] == str(GIB).encode()
    finally:
        await client.close()
    assert_whole_and_lean(watch)


# Cache


async def test_a_cached_response_is_served_without_the_app_and_without_cookies(start_app):
    thrust = await start_app()
    first = await fetch(thrust, "/cached?max_age=60")
    second = await fetch(thrust, "/cached?max_age=60")
    assert (first.header("X-Cache"), second.header("X-Cache")) == ("miss", "hit")
    assert second.body == first.body == b"made 1 times; "
    assert (await fetch(thrust, url("/hits", path="/cached"))).body == b"1"
    assert not first.has("Set-Cookie") and not second.has("Set-Cookie")


async def test_cache_entries_ignore_query_order_but_not_the_host(start_app):
    thrust = await start_app()
    assert (await fetch(thrust, "/cached?b=2&a=1")).header("X-Cache") == "miss"
    assert (await fetch(thrust, "/cached?a=1&b=2")).header("X-Cache") == "hit"
    other = await fetch(thrust, "/cached?a=1&b=2", host="other.test")
    assert other.header("X-Cache") == "miss"
    assert other.body == b"made 2 times; "


async def test_posts_bypass_the_cache(start_app):
    thrust = await start_app()
    await fetch(thrust, "/cached")  # stored, yet a POST may not be answered from it
    post = await fetch(thrust, "/cached", method="POST", headers={"Content-Length": "0"})
    assert post.header("X-Cache") == "bypass"


async def test_a_range_is_served_from_a_cached_whole_response(start_app):
    thrust = await start_app()
    not_stored = await fetch(thrust, "/cached?pad=100", headers={"Range": "bytes=0-3"})
    assert not_stored.header("X-Cache") == "bypass", "a partial response is not stored"
    whole = await fetch(thrust, "/cached?pad=100")
    single = await fetch(thrust, "/cached?pad=100", headers={"Range": "bytes=5-9"})
    assert (single.status, single.header("X-Cache")) == (206, "hit")
    assert single.body == whole.body[5:10]
    assert single.header("Content-Range") == f"bytes 5-9/{len(whole.body)}"
    several = await fetch(thrust, "/cached?pad=100", headers={"Range": "bytes=0-1,-3"})
    assert several.status == 206 and several.header("Content-Type").startswith("multipart/byteranges")
    assert whole.body[:2] in several.body and whole.body[-3:] in several.body
    beyond = await fetch(thrust, "/cached?pad=100", headers={"Range": f"bytes={len(whole.body) + 10}-"})
    assert beyond.status == 416
    calls = await fetch(thrust, url("/hits", path="/cached"))
    assert calls.body == b"2", "the app made the partial response it was asked for, then the whole one"


async def test_a_hit_answers_if_none_match_with_304(start_app):
    thrust = await start_app()
    stored = await fetch(thrust, "/cached")
    assert stored.has("ETag")
    revalidated = await fetch(thrust, "/cached", headers={"If-None-Match": stored.header("ETag")})
    assert (revalidated.status, revalidated.header("X-Cache")) == (304, "hit")
    assert revalidated.body == b""


async def test_vary_keeps_one_entry_per_header_value(start_app):
    thrust = await start_app()
    by_lang = "/cached?vary=X-Lang"
    made = {lang: await fetch(thrust, by_lang, headers={"X-Lang": lang}) for lang in ("en", "fr")}
    assert [response.header("X-Cache") for response in made.values()] == ["miss", "miss"]
    for lang, original in made.items():
        hit = await fetch(thrust, by_lang, headers={"X-Lang": lang})
        assert (hit.header("X-Cache"), hit.body) == ("hit", original.body), lang
    assert made["en"].body != made["fr"].body


async def test_a_full_cache_evicts_the_least_recently_used_entry(start_app):
    thrust = await start_app(CACHE_SIZE="25000")  # room for two 10 kB entries, not three
    for name in "ABC":
        assert (await fetch(thrust, f"/cached?pad=10000&name={name}")).header("X-Cache") == "miss"
    assert (await fetch(thrust, "/cached?pad=10000&name=A")).header("X-Cache") == "miss"
    assert (await fetch(thrust, "/cached?pad=10000&name=C")).header("X-Cache") == "hit"


async def test_a_private_response_is_never_a_hit(start_app):
    thrust = await start_app()
    for _ in range(2):
        assert (await fetch(thrust, "/text?private=1")).header("X-Cache") == "miss"
    assert (await fetch(thrust, url("/hits", path="/text"))).body == b"2"


# Compression


def assert_compressed(response: Response, encoding: str) -> None:
    """Sent in `encoding`, marked as varying with Accept-Encoding, and framed by its encoded length:
    chunked, or a Content-Length that counts the bytes sent (never the app's uncompressed length)."""
    assert response.header("Content-Encoding") == encoding
    assert "accept-encoding" in response.tokens("Vary")
    if response.header("Transfer-Encoding") == "chunked":
        assert not response.has("Content-Length")
    else:
        assert response.header("Content-Length") == str(len(response.body))


async def test_each_accepted_encoding_decodes_to_the_app_body(start_app):
    thrust = await start_app()
    plain = await fetch(thrust, "/text?size=5000")
    assert not plain.has("Content-Encoding") and len(plain.body) == 5000
    for encoding in ("gzip", "zstd", "br"):
        response = await fetch(thrust, "/text?size=5000", headers={"Accept-Encoding": encoding})
        assert_compressed(response, encoding)
        assert response.header("Transfer-Encoding") == "chunked", "streamed: its length is not known up front"
        assert len(response.body) < 5000
        assert decoded(response) == plain.body, encoding


async def test_q_values_choose_the_encoding(start_app):
    thrust = await start_app()
    preferred = await fetch(thrust, "/text?size=5000", headers={"Accept-Encoding": "gzip;q=1, br;q=0.5"})
    assert preferred.header("Content-Encoding") == "gzip"
    refused = await fetch(thrust, "/text?size=5000", headers={"Accept-Encoding": "br;q=0"})
    assert refused.header("Content-Encoding") != "br"


async def test_small_and_image_responses_are_not_compressed(start_app, tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    thrust = await start_app()
    small = await fetch(thrust, "/text?size=500", headers={"Accept-Encoding": "gzip"})
    assert not small.has("Content-Encoding") and len(small.body) == 500
    image = await fetch(thrust, url("/file", path=png, type="image/png"), headers={"Accept-Encoding": "gzip"})
    assert not image.has("Content-Encoding")
    assert image.body == png.read_bytes()


async def test_cache_hits_are_compressed_too(start_app):
    thrust = await start_app()
    miss = await fetch(thrust, "/cached?pad=5000", headers={"Accept-Encoding": "gzip"})
    hit = await fetch(thrust, "/cached?pad=5000", headers={"Accept-Encoding": "gzip"})
    assert hit.header("X-Cache") == "hit"
    assert_compressed(hit, "gzip")
    assert decoded(hit) == decoded(miss)


GZIP_FCOMMENT = 0x10


async def test_gzip_padding_follows_the_jitter_setting(start_app):
    padded, unpadded = await start_app(), await start_app(GZIP_COMPRESSION_JITTER="0")
    gzip_text = {"Accept-Encoding": "gzip"}
    first, again = [await fetch(padded, "/text?size=5000", headers=gzip_text) for _ in range(2)]
    assert first.body[3] & GZIP_FCOMMENT, "jitter padding goes in the gzip comment"
    assert again.body == first.body, "the same content gets the same padding"
    bare = await fetch(unpadded, "/text?size=5000", headers=gzip_text)
    assert not bare.body[3] & GZIP_FCOMMENT
    assert decoded(bare) == decoded(first)


async def test_compression_can_be_turned_off(start_app):
    thrust = await start_app(GZIP_COMPRESSION_ENABLED="false")
    response = await fetch(thrust, "/text?size=5000", headers={"Accept-Encoding": "gzip, zstd, br"})
    assert not response.has("Content-Encoding")
    assert len(response.body) == 5000


async def test_the_guard_leaves_credentialed_and_private_responses_uncompressed(start_app):
    thrust = await start_app(GZIP_COMPRESSION_DISABLE_ON_AUTH="true")
    gzip_text = {"Accept-Encoding": "gzip"}
    plain = await fetch(thrust, "/text?size=5000", headers=gzip_text)
    assert_compressed(plain, "gzip")
    guarded = [
        await fetch(thrust, "/text?size=5000", headers={**gzip_text, "Cookie": "session=1"}),
        await fetch(thrust, "/text?size=5000", headers={**gzip_text, "Authorization": "Bearer t"}),
        await fetch(thrust, "/text?size=5000&private=1", headers=gzip_text),
    ]
    for response in guarded:
        assert not response.has("Content-Encoding")
        assert len(response.body) == 5000
    assert not any(response.has("No-Gzip-Compression") for response in [plain, *guarded])


# Event streams


@pytest.mark.parametrize("encoding", ["gzip", None])
async def test_each_event_reaches_the_client_as_the_app_sends_it(start_app, encoding):
    thrust = await start_app()
    headers = {"Accept-Encoding": encoding} if encoding else {}
    reader, writer = await open_request(thrust, "/stream", headers=headers)
    try:
        head = await read_head(reader)
        assert head.status == 200
        assert head.header("Content-Encoding") == encoding
        decompress = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress if encoding else bytes
        pieces = body_pieces(reader, head)
        events = b""
        async with asyncio.timeout(5):  # the app holds back event two until /release
            while b"data: one\n\n" not in events:
                events += decompress(await anext(pieces))
        assert b"two" not in events
        assert (await fetch(thrust, "/release")).body == b"released"
        async with asyncio.timeout(5):
            async for piece in pieces:
                events += decompress(piece)
        assert events == b"data: one\n\ndata: two\n\n"
    finally:
        writer.close()


# Write timeout: no progress, not total time


async def small_window_request(thrust: Pythrust, path: str) -> Connection:
    """A request from a client with a small receive buffer, so pythrust feels how fast it reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", thrust.http_port))
    return await open_request(thrust, path, sock=sock)


@pytest.fixture
def file_200mb(tmp_path: Path) -> Path:
    return sparse_file(tmp_path / "200mb.bin", 200 * MB)


async def test_a_slow_steady_reader_gets_the_whole_file(start_app, file_200mb):
    thrust = await start_app(HTTP_WRITE_TIMEOUT="2")
    reader, writer = await small_window_request(thrust, url("/file", path=file_200mb))
    rate = 50 * MB  # bytes a second: about 4 s for the file, twice the write timeout
    started, received = time.monotonic(), 0
    try:
        async with asyncio.timeout(30):
            assert (await read_head(reader)).status == 200
            while piece := await reader.read(1 << 20):
                received += len(piece)
                await asyncio.sleep(max(0.0, started + received / rate - time.monotonic()))
    finally:
        writer.close()
    assert received == 200 * MB
    assert time.monotonic() - started > 3, "the download must outlast the write timeout"


async def test_a_reader_that_stops_is_disconnected(start_app, file_200mb):
    thrust = await start_app(HTTP_WRITE_TIMEOUT="2")
    reader, writer = await small_window_request(thrust, url("/file", path=file_200mb))
    received = 0
    try:
        assert (await asyncio.wait_for(read_head(reader), 5)).status == 200
        await asyncio.sleep(6)  # the stall: no reading for three write timeouts
        async with asyncio.timeout(10):
            while piece := await reader.read(1 << 20):
                received += len(piece)
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    assert received < 200 * MB, "pythrust must give up on a client that takes nothing for too long"


async def test_a_cached_file_response_varies_by_cookie_per_user(start_app, tmp_path):
    for user in ("alice", "bob"):
        (tmp_path / f"{user}.txt").write_text(f"{user}'s private statement")
    thrust = await start_app()
    path = url("/statement", dir=tmp_path)
    for _ in range(2):  # a miss each, then a hit each: never the other user's file
        for user in ("alice", "bob"):
            response = await fetch(thrust, path, headers={"Cookie": f"user={user}"})
            assert response.body == f"{user}'s private statement".encode(), response.header("X-Cache")
    assert (await fetch(thrust, url("/hits", path="/statement"))).body == b"2"


async def test_repeats_of_a_cached_file_response_follow_edits_and_users(start_app, tmp_path):
    """On one kept connection, repeats are answered from kept answers (proxy/http/replay.py)."""
    statement = tmp_path / "alice.txt"
    statement.write_text("alice owes 10")
    (tmp_path / "bob.txt").write_text("bob owes 20")
    thrust = await start_app()
    reader, writer = await asyncio.open_connection("127.0.0.1", thrust.http_port)
    path = url("/statement", dir=tmp_path)

    async def get(user: str) -> bytes:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nCookie: user={user}\r\n\r\n".encode())
        head = await asyncio.wait_for(read_head(reader), 5)
        return await asyncio.wait_for(reader.readexactly(int(head.header("Content-Length"))), 5)

    try:
        for _ in range(3):
            assert await get("alice") == b"alice owes 10"
            assert await get("bob") == b"bob owes 20"
        statement.write_text("alice owes 99")
        later = statement.stat().st_mtime + 10
        os.utime(statement, (later, later))
        assert await get("alice") == b"alice owes 99"
        assert await get("bob") == b"bob owes 20"
    finally:
        writer.close()
    assert (await fetch(thrust, url("/hits", path="/statement"))).body == b"2"


async def test_vary_on_a_forwarded_header_is_honoured(start_app):
    thrust = await start_app()
    for host in ("evil.example", "good.example", "good.example"):
        response = await fetch(thrust, "/forwarded", headers={"X-Forwarded-Host": host})
        assert response.body == host.encode(), "one client's X-Forwarded-Host served to another"


async def test_a_cacheable_204_keeps_the_connection_usable(start_app):
    thrust = await start_app()
    reader, writer = await asyncio.open_connection("127.0.0.1", thrust.http_port)
    try:
        for _ in range(3):  # a miss, then hits: each a bare 204 on the same connection
            writer.write(f"GET /nothing HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            head = await asyncio.wait_for(read_head(reader), 5)
            assert head.status == 204
            assert not head.has("Transfer-Encoding") and head.header("Content-Length") in (None, "0")
    finally:
        writer.close()


async def test_a_file_name_in_utf8_is_found(start_app, tmp_path):
    (tmp_path / "café.txt").write_text("crème")
    thrust = await start_app()
    response = await fetch(thrust, url("/sendfile", path=tmp_path / "café.txt"))
    assert (response.status, response.body) == (200, "crème".encode())


async def test_a_fifo_named_by_the_app_is_refused_without_stalling(start_app, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    thrust = await start_app()
    response = await fetch(thrust, url("/sendfile", path=tmp_path / "pipe"))
    assert response.status == 404
    assert (await fetch(thrust, "/text?size=10")).status == 200, "the server still answers"


async def test_a_client_that_pipelines_and_never_reads_holds_bounded_memory(start_app):
    thrust = await start_app()
    path = "/cached?pad=1000000"  # a 1 MB cached response
    assert (await fetch(thrust, path)).status == 200
    before = resident_bytes(thrust.process.pid)
    _, writer = await asyncio.open_connection("127.0.0.1", thrust.http_port)
    # Padded so that the requests alone overflow the socket buffers once pythrust stops reading.
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {'p' * 8000}\r\n\r\n".encode()
    try:
        sent = 0
        for _ in range(3000):  # 3 GB of responses if pythrust kept answering
            writer.write(request)
            try:
                await asyncio.wait_for(writer.drain(), 2)
            except TimeoutError:
                break  # pythrust stopped reading: it waits for this client to take its responses
            sent += 1
        assert sent < 3000, "pythrust read every request of a client that takes no responses"
        assert resident_bytes(thrust.process.pid) - before < 50 * MB
    finally:
        writer.transport.abort()


async def test_an_http2_client_that_takes_nothing_is_cut_after_the_write_timeout(start_app):
    thrust = await start_app(H2C_ENABLED="true", HTTP_WRITE_TIMEOUT="1")
    client = await H2Client.connect(thrust.http_port, HOST, None)
    client.auto_ack = False  # never gives window back: the 1 MB response cannot get through
    try:
        client.start("/cached?pad=1000000")
        await asyncio.wait_for(client.closed.wait(), 10)
    finally:
        await client.close()
