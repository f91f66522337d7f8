"""pythrust's decisions for one request: the cache, X-Sendfile and compression, in thruster's order.

thruster's chain (spec 5) is compression outside X-Sendfile outside the
cache outside the proxy: the cache stores the app's uncompressed responses,
compression applies to hits and to sendfile'd files too, and a cached
X-Sendfile response sends the file again. Here the same order is kept as
decisions rather than wrappers: `AppDispatcher.route` looks the request up
in the cache and, on a hit, answers it without the app (thruster/hits.py);
otherwise `Exchange.response` decides, once the app's head is in, how its
response travels on.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from proxy.http.request import Request
from proxy.http.upstream import UpstreamPool
from thruster.accel import AccelMapping
from thruster.cache import CachedResponse, HttpCache, cache_key, freshness
from thruster.compression import (
    MIN_SIZE,
    choose_encoding,
    compressible_type,
    request_blocks_compression,
    response_blocks_compression,
)
from thruster.config import ThrusterConfig
from thruster.filememory import FileMemory
from thruster.headers import RequestHeaders, ResponseHead
from thruster.hits import CacheHits, stored_response
from thruster.rendered import PLAIN_REQUEST, RenderedResponses
from thruster.rework import Rework
from thruster.sendfile import FileRoots, refuse, send_file

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection
    from proxy.log import JsonLog

_SENDFILE_REQUEST_HEADERS = (b"x-sendfile-type:", b"x-accel-mapping:")
# The request headers routing reads, and the response headers that make pythrust more than add its
# X-Cache and Vary lines (when the client takes no encoding): one search of a lower-cased head each
# tells that a request or a response has none of them, as most have not.
_ROUTED_BY = re.compile(rb"\r\n(?:range|x-sendfile-type|x-accel-mapping):")
_ACTED_ON = re.compile(rb"\r\n(?:cache-control|vary|x-cache|x-sendfile|x-accel-redirect):")


class AppDispatcher:
    """Every request goes to the one app, unless the cache can answer it."""

    def __init__(self, pool: UpstreamPool, config: ThrusterConfig, log: JsonLog) -> None:
        self.pool = pool
        self.log = log
        self.forward_headers = config.forward_headers
        # thruster's write timeout covers the wait for the app's response too.
        self.target_timeout = float(config.http_write_timeout)
        self.cache = HttpCache(config.cache_size, config.max_cache_item_size)
        self.max_cache_item_size = config.max_cache_item_size
        self.sendfile = config.x_sendfile_enabled
        self.accel = AccelMapping(config.x_accel_mapping)
        for ignored in self.accel.ignored:
            log.warn("X_ACCEL_MAPPING entry ignored: not DIR=URI with both absolute", entry=ignored)
        # Mapped directories are the X-Accel-Redirect files' own roots; X_SENDFILE_ROOTS, if set, too.
        roots = config.x_sendfile_roots
        self.roots = FileRoots(roots + self.accel.directories if roots else ())
        if not self.sendfile:
            self.sendfile_request_lines = b""
        elif self.accel:
            self.sendfile_request_lines = self.accel.request_lines
        else:
            self.sendfile_request_lines = b"X-Sendfile-Type: X-Sendfile\r\n"
        self.compress = config.gzip_compression_enabled
        # The end of a relayed head that pythrust changes in nothing else (Exchange.response); with
        # compression on, every response varies on Accept-Encoding, compressed or not.
        vary = b"Vary: Accept-Encoding\r\n" if self.compress else b""
        self.bypass_tail = b"X-Cache: bypass\r\n" + vary + b"\r\n"
        self.miss_tail = b"X-Cache: miss\r\n" + vary + b"\r\n"
        self.compress_guard = config.gzip_compression_disable_on_auth
        self.jitter = config.gzip_compression_jitter
        self.hits = CacheHits(self)
        self.files = FileMemory(self.cache, self.jitter, self.max_cache_item_size)
        self.rendered = RenderedResponses()

    def route(self, request: Request) -> int:
        request.pool = self.pool
        request.path = request.url
        request.forward_headers = self.forward_headers
        request.target_timeout = self.target_timeout
        headers = RequestHeaders(request)
        ranged = False
        if _ROUTED_BY.search(headers.lowered) is not None:
            ranged = b"range" in headers
            if b"x-sendfile-type" in headers or b"x-accel-mapping" in headers:
                # Only pythrust says whether and how the app may answer with a file, never the client.
                request.headers = [
                    line for line in request.headers if not line.lower().startswith(_SENDFILE_REQUEST_HEADERS)
                ]
        if self.sendfile_request_lines:
            request.headers.append(self.sendfile_request_lines)
        exchange = Exchange(self, headers)
        request.context = exchange
        if request.method in (b"GET", b"HEAD") and request.upgrade is None:
            key = cache_key(request.method, request.url, request.host)
            hit = self.cache.get(key, headers.get)
            if hit is not None:
                exchange.hit = hit
                request.pool = self.hits
            if not ranged:
                exchange.cache_key = key  # a partial response is never stored (but a whole one serves it)
        return 0

    def file_named(self, head: ResponseHead) -> tuple[bool, str | None]:
        """Whether the app answered with a file (X-Sendfile, or X-Accel-Redirect when mapped), and its
        path: None for an X-Accel-Redirect URI that names no file the mapping allows."""
        if not self.sendfile:
            return False, None
        sendfile = head.get(b"x-sendfile")
        if sendfile is not None:
            return True, os.fsdecode(sendfile)  # the bytes the app named, as the file system has them
        redirect = head.get(b"x-accel-redirect") if self.accel else None
        if redirect is not None:
            return True, self.accel.path_for(redirect)
        return False, None

    def renderable(self, request: Request, headers: RequestHeaders) -> bool:
        """Whether a ready response (thruster/rendered.py) may answer: a GET without validators or
        Range, whose compression depends on nothing but Accept-Encoding."""
        if request.is_head or any(name in headers for name in PLAIN_REQUEST):
            return False
        credentials = b"cookie" in headers or b"authorization" in headers or b"x-csrf-token" in headers
        return not (self.compress_guard and credentials)

    def encoding_for(self, request: Request, headers: RequestHeaders) -> bytes | None:
        """The encoding this client may get a response in, before looking at the response."""
        if not self.compress or request.is_head or request.http10:
            return None
        if self.compress_guard and request_blocks_compression(
            headers.get(b"cookie"), headers.get(b"authorization"), headers.get(b"x-csrf-token")
        ):
            return None
        accepted = headers.get(b"accept-encoding")
        return choose_encoding(accepted) if accepted else None

    def should_compress(self, head: ResponseHead) -> bool:
        """Whether a response (of a client that accepts compression) is worth and safe to compress."""
        if head.has(b"content-encoding") or head.has(b"content-range") or head.status in (204, 304):
            return False
        length = head.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) < MIN_SIZE):
            return False
        if self.compress_guard and response_blocks_compression(
            head.has(b"set-cookie"), head.get(b"cache-control"), head.get(b"vary")
        ):
            return False
        return compressible_type(head.get(b"content-type"))


class Exchange:
    """What pythrust knows of one request between routing and the app's response head."""

    __slots__ = ("app", "cache_key", "headers", "hit")

    def __init__(self, app: AppDispatcher, headers: RequestHeaders) -> None:
        self.app = app
        self.headers = headers
        self.cache_key: bytes | None = None  # None: the cache is bypassed
        self.hit: CachedResponse | None = None

    def response(self, request: Request, client: ClientConnection, raw_head: bytes) -> tuple[bytes, object]:
        """The head to relay and no work (the body is relayed raw), or no head and the work that
        takes the response over: X-Sendfile, or a `Rework` that compresses and/or captures it."""
        app = self.app
        encoding = app.encoding_for(request, self.headers)
        if encoding is None and _ACTED_ON.search(raw_head.lower()) is None:
            # What the general case below comes to for a response that the cache does not store, that
            # names no file, has no Vary to merge, to a client taking no encoding: most of them.
            return raw_head[:-2] + (app.bypass_tail if self.cache_key is None else app.miss_tail), None
        head = ResponseHead(raw_head)
        vary = head.get(b"vary")
        cache_control = head.get(b"cache-control")
        ttl = 0.0
        if self.cache_key is not None and cache_control is not None:
            ttl = freshness(head.status, cache_control, vary)
        # Whether the response is worth compressing matters to a client that takes an encoding, and to
        # the cache (for the clients of later hits). Decided before the cache takes Set-Cookie off: the
        # guard must see the app's response.
        compressible = (encoding is not None or ttl > 0) and app.compress and app.should_compress(head)
        if not compressible:
            encoding = None
        named, path = app.file_named(head)
        head.set(b"X-Cache", b"bypass" if self.cache_key is None else b"miss")
        if ttl:
            head.remove(b"set-cookie")  # a shared cached response must not carry one user's cookie
        if app.compress:
            head.add_vary(b"Accept-Encoding", vary)
        if named:
            if ttl and path is not None:
                self._store(stored_response(head, None, ttl, self.headers.get, vary, sendfile=path))
            return b"", _SendfileWork(head, path, self)
        on_captured = None
        bodiless = head.status < 200 or head.status in (204, 304)
        if bodiless:
            if ttl:
                self._store(stored_response(head, None, ttl, self.headers.get, vary))
            return head.to_bytes(), None  # nothing to compress, capture or frame
        if ttl and request.is_head:
            self._store(stored_response(head, None, ttl, self.headers.get, vary))
        elif ttl and (head.has(b"content-length") or not request.http10):
            on_captured = _Capture(self, head, ttl, vary, compressible).store
        if encoding is None and on_captured is None:
            return head.to_bytes(), None
        return b"", Rework(client, request, head, encoding, app.jitter, on_captured, app.max_cache_item_size)

    def _store(self, response: CachedResponse) -> None:
        self.app.cache.put(self.cache_key, response, self.headers.get)


class _Capture:
    """Keeps a response's body in the cache once it has been received whole."""

    __slots__ = ("compressible", "exchange", "head", "ttl", "vary")

    def __init__(
        self, exchange: Exchange, head: ResponseHead, ttl: float, vary: bytes | None, compressible: bool
    ) -> None:
        self.exchange = exchange
        # A copy: the head goes on to be changed for this client (compression, framing).
        self.head = head.copy()
        self.ttl = ttl
        self.vary = vary
        self.compressible = compressible

    def store(self, body: bytes) -> None:
        exchange = self.exchange
        exchange._store(
            stored_response(
                self.head, body, self.ttl, exchange.headers.get, self.vary, compressible=self.compressible
            )
        )


class _SendfileWork:
    """The app answered with X-Sendfile or X-Accel-Redirect: drop its body, then send the file."""

    __slots__ = ("ends_at_head", "exchange", "head", "path")

    def __init__(self, head: ResponseHead, path: str | None, exchange: Exchange) -> None:
        self.head = head
        self.path = path
        self.exchange = exchange
        # Rails sends Content-Length: 0 and no body; Flask the file's length and no body.
        self.ends_at_head = head.get(b"content-length") != b"0" and not head.has(b"transfer-encoding")

    def body(self, data: bytes) -> None:
        pass

    def end(self, client: ClientConnection, request: Request) -> None:
        self.head.remove(b"connection")  # send_file ends the head as this request needs
        if self.path is None:
            uri = (self.head.get(b"x-accel-redirect") or b"").decode("latin-1")
            log = self.exchange.app.log
            refuse(client, request, self.head, log, "X-Accel-Redirect outside X_ACCEL_MAPPING", uri=uri)
            return
        send_file(client, request, self.head, self.path, self.exchange)
