"""`pythrust serve DIR`: a static file server, also an app's asset server.

Only regular files under DIR are served (thruster/static.py: no `..`, no
encoded separators, no NUL, no symlink out of DIR, no dotfiles unless
SERVE_DOTFILES). A directory serves its index.html (after a redirect to the
slashed path, so its relative links work). A client that accepts br, zstd
or gzip gets the file's precompressed sibling (`.br`, `.zst`, `.gz`) if
there is one, else a copy compressed once and kept in the cache. Files up
to 64 KiB are kept in memory (never served stale: thruster/rendered.py);
larger ones go out by sendfile. Fingerprinted names (`app-4b2f8e9a1c.css`)
are cached by clients for a year.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from proxy.http import replay
from proxy.http.filesender import FileSender, Piece
from proxy.http.request import Request
from proxy.http.responses import error_response, redirect_response
from proxy.http.upstream import connection_tail
from proxy.log import JsonLog
from thruster.cache import HttpCache
from thruster.compression import MIN_SIZE, accepted_encodings, choose_encoding, compressible_type
from thruster.config import ThrusterConfig
from thruster.filememory import FileMemory
from thruster.headers import request_headers
from thruster.rendered import PLAIN_REQUEST, RenderedResponses
from thruster.sendfile import REASONS
from thruster.static import (
    cache_control_for,
    content_type_for,
    file_etag,
    plan_file,
    precompressed_sibling,
    resolve_under,
)

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection

IN_MEMORY = 64 * 1024
_METHOD_NOT_ALLOWED = error_response(405).replace(b"\r\n", b"\r\nAllow: GET, HEAD\r\n", 1)
NOT_FOUND_PAGE = (
    b'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>404 Not Found</title></head>\n'
    b"<body><h1>404 Not Found</h1><p>There is no file at this address.</p></body></html>\n"
)
RESOLVED_FOR = 1.0  # seconds a URL's resolution to a file is reused (resolving costs ~20 us of syscalls)
MAX_RESOLVED = 10_000


class StaticFiles:
    """The dispatcher, and the "pool" that answers: files are sent without any upstream."""

    address_bytes = b""  # the access log's target: none
    answers_itself = True

    def __init__(self, root: str, config: ThrusterConfig, log: JsonLog) -> None:
        self.root = os.path.realpath(root)
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.dotfiles = config.serve_dotfiles
        self.compress = config.gzip_compression_enabled
        self.max_compressed = config.max_cache_item_size
        self.memory = FileMemory(
            HttpCache(config.cache_size, config.max_cache_item_size),
            config.gzip_compression_jitter,
            config.max_cache_item_size,
        )
        self.resolved: dict[bytes, tuple[float, str | None]] = {}
        self.rendered = RenderedResponses()

    def route(self, request: Request) -> int | bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _METHOD_NOT_ALLOWED
        url = request.url
        if not url.startswith(b"/"):
            url = _origin_form(url)
        path = self._resolve(url)
        if path is None:
            return 404
        if path.endswith("/index.html"):
            target, _, query = url.partition(b"?")
            if not target.endswith((b"/", b"/index.html")):
                # One leading slash: "//evil.example/" would send the browser to another host.
                location = b"/" + target.lstrip(b"/") + b"/"
                return redirect_response(location + (b"?" + query if query else b""))
        request.pool = self
        request.context = path
        return 0

    def _resolve(self, url: bytes) -> str | None:
        now = self.loop.time()
        known = self.resolved.get(url)
        if known is not None and known[0] > now:
            return known[1]
        path = resolve_under(self.root, url, self.dotfiles)
        if len(self.resolved) >= MAX_RESOLVED:
            self.resolved.clear()
        self.resolved[url] = (now + RESOLVED_FOR, path)
        return path

    def acquire(self, request: Request, client: ClientConnection) -> None:
        """Answer `request` with the file `route` resolved."""
        path: str = request.context
        if not request.complete:
            request.keep_alive = False  # answered before its body was read: the connection closes
        headers = request_headers(request.headers)
        plain = not request.is_head and PLAIN_REQUEST.isdisjoint(headers)
        key = (request.url, headers.get(b"accept-encoding"))
        if plain:
            held = self.rendered.get(key)
            if held is not None:
                response = held.head + connection_tail(request, client) + held.body
                _answer(client, request, response, len(held.body))
                replay.offer(client, request, response, held.expires, held.unchanged)
                return
        ranged = b"range" in headers
        accepted = accepted_encodings(headers.get(b"accept-encoding")) if self.compress and not ranged else ()
        encoding = None
        served = path
        if accepted:
            sibling = precompressed_sibling(path, accepted.__contains__)
            if sibling is not None:
                served, encoding = sibling
        try:
            info = os.stat(served)
        except OSError:
            client.upstream_failed(request, 404)
            return
        content_type = content_type_for(path)
        etag = file_etag(info.st_size, info.st_mtime_ns, info.st_ino)
        body = None
        if (
            encoding is None
            and accepted
            and compressible_type(content_type)
            and MIN_SIZE <= info.st_size <= self.max_compressed
        ):
            encoding = choose_encoding(headers[b"accept-encoding"])
            # Each representation has its own validator.
            compressed_etag = etag[:-1] + b"-" + encoding + b'"'
            body = self.memory.compressed(served, compressed_etag, encoding)
            if body is None:
                encoding = None
            else:
                etag = compressed_etag
        elif info.st_size <= IN_MEMORY:
            body = self.memory.content(served, etag, IN_MEMORY)
        size = info.st_size if body is None else len(body)
        plan = plan_file(
            size,
            info.st_mtime,
            method=request.method,
            header=headers.get,
            etag=etag,
            content_type=content_type,
            cache_control=cache_control_for(os.path.basename(path)),
        )
        lines = [b"HTTP/1.1 %d %s\r\n" % (plan.status, REASONS.get(plan.status, b""))]
        lines += [b"%s: %s\r\n" % header for header in plan.headers]
        if encoding is not None:
            lines.append(b"Content-Encoding: " + encoding + b"\r\n")
        if self.compress:
            lines.append(b"Vary: Accept-Encoding\r\n")
        head = b"".join(lines)
        response_head = head + connection_tail(request, client)
        request.status = plan.status
        if request.is_head or not plan.ranges:
            _answer(client, request, response_head, 0)
        elif body is not None and not plan.parts and plan.ranges == [(0, len(body))]:
            _answer(client, request, response_head + body, len(body))
            if plain:
                self.rendered.put(key, served, info, head, body)
        else:
            self._send_from_disk(client, request, served, response_head, plan.ranges, plan.parts)

    def _send_from_disk(
        self,
        client: ClientConnection,
        request: Request,
        path: str,
        head: bytes,
        ranges: list[tuple[int, int]],
        parts: list[bytes],
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            client.abort()  # gone since it was looked at: the promised head cannot be kept
            return
        pieces: list[Piece] = [head]
        if parts:
            for part, file_range in zip(parts, ranges, strict=False):
                pieces += (part, file_range)
            pieces.append(parts[-1])
        else:
            pieces += ranges
        FileSender(client, request, fd, pieces).start()


def _answer(client: ClientConnection, request: Request, response: bytes, body_size: int) -> None:
    """A whole response from memory."""
    request.status = request.status or 200
    request.response_started = True
    request.response_bytes = body_size
    client.transport.write(response)
    client.response_finished(request)


def _origin_form(url: bytes) -> bytes:
    """The path and query of an absolute-form target (`http://host/path`), which servers must accept."""
    _, separator, rest = url.partition(b"://")
    if not separator:
        return url
    slash = rest.find(b"/")
    return rest[slash:] if slash >= 0 else b"/"
