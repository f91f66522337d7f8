"""One client request as the data plane sees it, and the dispatcher contract.

A `Request` lives from the first byte of the request to the last byte of its
response. It holds the request head already filtered for forwarding (so the
upstream head is built with one join), the client-supplied values the
forwarding rules need, and the routing decision the dispatcher writes into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.http.buffering import BufferPolicy, RequestSpool
    from proxy.http.upstream import UpstreamConnection, UpstreamPool


class Request:
    """Per-request state shared by the client and upstream connections."""

    __slots__ = (
        "body",
        "body_received",
        "body_size",
        "buffering",
        "chunked",
        "complete",
        "connection",
        "content_length",
        "context",
        "extra_log",
        "forward_headers",
        "had_body",
        "head",
        "head_filter",
        "headers",
        "host",
        "http10",
        "is_head",
        "kamal_target",
        "keep_alive",
        "method",
        "pages",
        "path",
        "pool",
        "request_id",
        "request_start",
        "response_bytes",
        "response_started",
        "retried",
        "scheme",
        "service",
        "started_at",
        "status",
        "target_timeout",
        "unmetered",
        "upgrade",
        "upstream",
        "url",
        "user_agent",
        "xff",
        "xfh",
        "xfp",
    )

    def __init__(self, started_at: float, scheme: bytes = b"http") -> None:
        self.started_at = started_at
        self.scheme = scheme
        self.method = b""
        self.url = b""
        self.path = b""
        self.head = b""
        self.http10 = False
        self.is_head = False
        self.keep_alive = False
        self.connection: bytes | None = None
        self.content_length: bytes | None = None
        self.headers: list[bytes] = [b""]  # [0] is the request line, filled in when forwarding
        self.host = b""
        self.xff: bytes | None = None
        self.xfp: bytes | None = None
        self.xfh: bytes | None = None
        self.request_id: bytes | None = None
        self.request_start = False
        self.user_agent = b""
        self.upgrade: bytes | None = None
        self.chunked = False
        self.complete = False
        self.had_body = False
        self.body: list[bytes] | RequestSpool | None = None  # a buffered body is a RequestSpool
        self.body_size = 0
        self.body_received = 0  # counted only under a body limit
        self.upstream: UpstreamConnection | None = None
        self.pool: UpstreamPool | None = None
        self.service = b""
        self.context: object = None  # what a dispatcher keeps for its own response handling (pythrust)
        self.forward_headers = False
        self.kamal_target: bytes | None = None  # the client's X-Kamal-Target, kept with forward_headers
        # Per-service choices the dispatcher makes (None: the server's defaults, nothing extra).
        self.pages: dict[int, bytes] | None = None  # the service's own error pages, status -> HTML
        self.head_filter: Callable[[Request, bytes], bytes] | None = None  # rewrites the response head
        self.buffering: BufferPolicy | None = None  # request/response buffering (proxy/http/buffering.py)
        self.unmetered = False  # routed to a path the service excludes from metrics
        self.extra_log = b""  # more access-log fields, ready-made JSON: ',"name":value...'
        self.target_timeout = 0.0
        self.response_started = False
        self.response_bytes = 0
        self.retried = False
        self.status = 0


class Dispatcher(Protocol):
    """What the data plane asks the control plane for each request.

    `route` reads `request.host`, `request.url`, `request.method` and
    `request.scheme`, and either fills in `pool`, `path`, `forward_headers`,
    `target_timeout` and `service` (and, for services that want them, `pages`,
    `head_filter` and `buffering`) and returns 0; or returns the status of an
    error page the proxy must give itself (404 when nothing matches, 503 when no
    target is healthy); or returns a complete response to send (redirects).

    `pool` is usually a target's `UpstreamPool`; it may be anything with
    `acquire(request, client)`, `address_bytes` (the access log's target) and
    `answers_itself` (True: it answers without a target, so no upstream head is
    built), such as pythrust's cache and static files.
    """

    def route(self, request: Request) -> int | bytes: ...
