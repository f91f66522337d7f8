"""Answering from the cache, without the app: the "pool" the dispatcher hands cache hits to.

A hit is one write of bytes held in memory. A client that accepts
compression gets a compressed copy, made on its first hit and cached beside
the original (its own LRU entry, so it counts against CACHE_SIZE). An entry
of an X-Sendfile response sends its file again, as thruster does, so a file
changed on disk is never served stale.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from proxy.http import replay
from proxy.http.upstream import connection_tail
from thruster.cache import CachedResponse, not_modified, vary_names
from thruster.compression import MIN_SIZE, Compressor, padding_for
from thruster.headers import RequestHeaders, ResponseHead
from thruster.sendfile import REASONS, send_file
from thruster.static import parse_http_date, plan_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from proxy.http.client import ClientConnection
    from proxy.http.request import Request
    from thruster.exchange import AppDispatcher, Exchange

_DROPPED = (b"connection", b"transfer-encoding", b"x-cache", b"content-length")


class CacheHits:
    address_bytes = b""  # the access log's target: none, the app was not asked
    answers_itself = True

    def __init__(self, app: AppDispatcher) -> None:
        self.app = app

    def acquire(self, request: Request, client: ClientConnection) -> None:
        exchange: Exchange = request.context
        entry = exchange.hit
        request.response_started = True
        client.deadline = 0.0
        request.status = entry.status
        if not request.complete:
            request.keep_alive = False  # answered before its body was read: the connection closes
        tail = connection_tail(request, client)
        if entry.sendfile is not None:
            self._send_file(client, request, exchange, entry.sendfile)
            return
        if b"range" in exchange.headers and not request.is_head:
            self._send_range(client, request, exchange, tail)
            return
        if not_modified(entry, exchange.headers.get(b"if-none-match")):
            request.status = 304
            head = ResponseHead(entry.head + tail)
            head.remove(b"content-length")
            head.set_status(304, b"Not Modified")
            client.transport.write(head.to_bytes())
            client.response_finished(request)
            return
        if entry.compressible and len(entry.body) >= MIN_SIZE:
            encoding = self.app.encoding_for(request, exchange.headers)
            if encoding is not None:
                entry = self._compressed(exchange, entry, encoding)
        body = entry.body
        request.response_bytes = len(body)
        client.transport.write(entry.head + tail + body)
        client.response_finished(request)

    def _send_range(
        self, client: ClientConnection, request: Request, exchange: Exchange, tail: bytes
    ) -> None:
        """A Range request answered from a whole cached response (thruster sends those to the app)."""
        entry = exchange.hit
        head = ResponseHead(entry.head + b"\r\n")
        last_modified = head.get(b"last-modified")
        modified = parse_http_date(last_modified) if last_modified else None
        headers = exchange.headers
        # Without a Last-Modified there is no date to compare If-(Un)Modified-Since or If-Range with.
        header = headers.get if modified is not None else _without_dates(headers)
        body = entry.body
        plan = plan_file(
            len(body),
            modified or 0.0,
            method=request.method,
            header=header,
            etag=entry.etag,
            content_type=head.get(b"content-type") or b"application/octet-stream",
        )
        for name, value in plan.headers:
            if name != b"Last-Modified":  # the entry's own, if it has one, is kept
                head.set(name, value)
        head.remove(b"x-cache")
        head.set(b"X-Cache", b"hit")
        head.set_status(plan.status, REASONS.get(plan.status, b""))
        request.status = plan.status
        pieces = [body[offset : offset + length] for offset, length in plan.ranges]
        if plan.parts:
            pieces = [piece for pair in zip(plan.parts, pieces, strict=False) for piece in pair]
            pieces.append(plan.parts[-1])
        content = b"".join(pieces)
        request.response_bytes = len(content)
        client.transport.write(head.to_bytes(tail) + content)
        client.response_finished(request)

    def _send_file(self, client: ClientConnection, request: Request, exchange: Exchange, path: str) -> None:
        """A hit on an X-Sendfile response: the file again; from a ready response when one is held."""
        rendered_as = None
        if self.app.renderable(request, exchange.headers):
            # The entry's Vary values too: the key alone names every variant of the URL.
            rendered_as = (exchange.cache_key, exchange.headers.get(b"accept-encoding"), exchange.hit.vary)
            held = self.app.rendered.get(rendered_as)
            if held is not None:
                request.response_bytes = len(held.body)
                response = held.head + connection_tail(request, client) + held.body
                client.transport.write(response)
                client.response_finished(request)
                # A replay skips the cache lookup: it ends with the entry (expired, evicted or replaced).
                entry = exchange.hit
                expires = min(held.expires, self.app.rendered.loop.time() + entry.expires - time.monotonic())
                replay.offer(client, request, response, expires, lambda: entry.stored and held.unchanged())
                return
        head = ResponseHead(exchange.hit.head + b"\r\n")
        send_file(client, request, head, path, exchange, rendered_as)

    def _compressed(self, exchange: Exchange, entry: CachedResponse, encoding: bytes) -> CachedResponse:
        key = exchange.cache_key + b"\0" + encoding
        cache = self.app.cache
        header = exchange.headers.get
        variant = cache.get(key, header)
        if variant is None:
            compressor = Compressor(encoding, padding_for(entry.body, self.app.jitter))
            body = compressor.compress(entry.body) + compressor.finish()
            head = ResponseHead(entry.head + b"\r\n")
            head.remove(b"content-length", b"accept-ranges")
            head.set(b"Content-Encoding", encoding)
            variant = stored_response(head, body, entry.expires - time.monotonic(), header, entry.vary_source)
            cache.put(key, variant, header)
        return variant


def _without_dates(headers: RequestHeaders) -> Callable[[bytes], bytes | None]:
    """Request headers for a response without Last-Modified: date conditions cannot hold, and an
    If-Range date cannot match (so the whole response is sent, as RFC 9110 13.1.5 asks)."""

    def header(name: bytes) -> bytes | None:
        if name in (b"if-modified-since", b"if-unmodified-since"):
            return None
        value = headers.get(name)
        if name == b"if-range" and value is not None and not value.startswith((b'"', b"W/")):
            return b'"no-date-to-compare"'
        return value

    return header


def stored_response(
    head: ResponseHead,
    body: bytes | None,
    ttl: float,
    header: Callable[[bytes], bytes | None],
    vary: bytes | None,
    sendfile: str | None = None,
    compressible: bool = False,
) -> CachedResponse:
    """A response as the cache keeps it: the head a hit sends (X-Cache: hit, the body's length, no
    connection headers) and the request's values of the headers the app's `vary` names.

    `body` is None for a response without one (to HEAD, or X-Sendfile): its head keeps the app's
    Content-Length, which says what the body would be."""
    stored = head.copy()
    stored.remove(*(_DROPPED if body is not None else _DROPPED[:-1]))
    if body is not None:
        stored.append(b"Content-Length", b"%d" % len(body))
    body = body or b""
    stored.append(b"X-Cache", b"hit")
    return CachedResponse(
        status=head.status,
        head=stored.to_bytes(b""),
        body=body,
        etag=head.get(b"etag"),
        expires=time.monotonic() + ttl,
        vary=tuple((name, header(name)) for name in vary_names(vary)),
        sendfile=sendfile,
        compressible=compressible,
        vary_source=vary,
    )
