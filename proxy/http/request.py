"""One client request as the data plane sees it, and the contracts around it.

A `Request` lives from the first byte of the request to the last byte of its
response. It holds the request head already filtered for forwarding (so the
upstream head is built with one join), the client-supplied values the
forwarding rules need, and the routing decision the dispatcher writes into it.

The request and the parties it passes between are typed here as Protocols, so
that no module of the engine has to know another's classes to hold or answer a
request: the `Dispatcher` that routes it, the `Pool` it goes to, the
`Upstream` that serves it, and the `Downstream` the response goes back to.
They are typing only: nothing is looked up through them at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class BufferPolicy:
    """What one service buffers, and its limits in bytes (0: no limit). See proxy/http/buffering.py."""

    requests: bool = False
    responses: bool = False
    memory: int = 1024 * 1024  # held in memory; the rest of a body goes to a temp file
    max_request_body: int = 0
    max_response_body: int = 0


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
        "proxy_connection",
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
        self.proxy_connection = False  # a Proxy-Connection header came (not forwarded)
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
        self.body: list[bytes] | BodySender | None = None  # a buffered body is a buffering.RequestSpool
        self.body_size = 0
        self.body_received = 0  # counted only under a body limit
        self.upstream: Upstream | None = None
        self.pool: Pool | None = None
        self.service = b""
        self.context: object = None  # what a dispatcher keeps for its own response handling (pythrust)
        self.forward_headers = False
        self.kamal_target: bytes | None = None  # the client's X-Kamal-Target, kept with forward_headers
        # Per-service choices the dispatcher makes (None: the server's defaults, nothing extra).
        self.pages: dict[int, bytes] | None = None  # the service's own error pages, status -> HTML
        self.head_filter: Callable[[Request, bytes], bytes] | None = None  # rewrites the response head
        self.buffering: BufferPolicy | None = None  # request/response buffering
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

    `pool` is a `Pool`: usually a target's `UpstreamPool`, or pythrust's cache
    and static files.
    """

    def route(self, request: Request) -> int | bytes: ...


class Pool(Protocol):
    """Where a routed request goes (`Request.pool`): a target's `upstream.UpstreamPool`, or
    pythrust's cache and static files."""

    address_bytes: bytes  # the access log's target
    answers_itself: bool  # True: it answers without a target, so no upstream head is built

    def acquire(self, request: Request, client: Downstream) -> None:
        """Serve `request`, answering `client`."""


class ResponseTransport(Protocol):
    """What response bytes are written to: a socket's transport, or a stand-in that frames or keeps
    them (an HTTP/2 stream, a response buffer)."""

    def write(self, data: bytes | memoryview) -> None: ...

    def writelines(self, chunks: Iterable[bytes | memoryview]) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class Downstream(Protocol):
    """Whoever a request's response goes to, as what serves it (an upstream connection, a file
    sender, a pool that answers itself) sees it: an HTTP/1.1 connection (client.ClientConnection),
    an HTTP/2 stream (http2.Http2Stream), or a response buffer between the target and either
    (buffering.ResponseBuffer)."""

    transport: ResponseTransport
    closed: bool  # gone, or answered for the last time: nothing more is to be written
    closing: bool  # the server is stopping: the response says `Connection: close`
    write_paused: bool  # the client is not taking bytes: whoever writes should pause
    deadline: float  # the loop time the connection's timer expires (0.0: none); a response clears it
    protocol: bytes  # as the access log names it
    log_fields: bytes  # the access-log fields of the connection (accesslog.AccessLog.connection_fields)
    read_size: int  # the most response bytes it takes from the target in one read

    def pause_reading_for_upstream(self) -> None:
        """The target is not taking the request body: stop reading it from the client."""

    def resume_reading_for_upstream(self) -> None: ...

    def body_flushed(self) -> None:
        """The body that arrived before the target connection did has been sent to it."""

    def response_finished(self, request: Request) -> None:
        """The response to `request` is all written."""

    def upstream_failed(self, request: Request, status: int) -> None:
        """Nothing of a response was written: answer `request` with the proxy's own `status`."""

    def abort(self) -> None:
        """A response broke off midway: cut the connection (or the stream)."""


class TunnelClient(Downstream, Protocol):
    """An HTTP/1.1 connection as a target that switched protocols sees it: the only client that forwards
    an upgrade (`Request.upgrade`)."""

    def tunnel_opened(self, request: Request, upstream: Upstream) -> None:
        """The target switched protocols: relay raw bytes both ways with `upstream`."""

    def tunnel_closed(self) -> None:
        """The target closed the tunnel."""


class RequestClient(Downstream, Protocol):
    """The client side itself, an HTTP/1.1 connection or an HTTP/2 stream (not a response buffer), as a
    buffered request body and a pool that holds requests (a paused service) see it."""

    def request_sent(self, request: Request) -> None:
        """A buffered body is all with the target: its time to answer starts."""

    def start_again(self, request: Request) -> None:
        """Route `request` anew and go on with it."""


class Upstream(Protocol):
    """What serves a request, as its client connection sees it (`Request.upstream`): a target
    connection (upstream.UpstreamConnection) or a file being sent (filesender.FileSender)."""

    attached: bool  # serving a request now (not connecting, not idle in its pool)
    client: Downstream | None  # whom it answers now
    request: Request | None  # the request whose body it takes, if any
    transport: ResponseTransport  # where the request's body is written (the target's socket)

    def pause(self) -> None:
        """The client is not taking the response: stop producing it."""

    def resume(self) -> None: ...

    def cancel(self, status: int) -> None:
        """Give up (a timeout): the client is answered `status`, or cut if a response has begun."""

    def client_gone(self) -> None:
        """The client went away mid-exchange."""


class BodySender(Protocol):
    """A request body kept whole before its target is asked (buffering.RequestSpool), as the target
    connection that sends it sees it (`Request.body`, `UpstreamConnection.body_sender`)."""

    def send(self, upstream: Any) -> None:
        """`upstream` (an upstream.UpstreamConnection) has written the head: send the body after it."""

    def pause(self) -> None:
        """The target is not taking the body."""

    def resume(self) -> None: ...

    def stop(self) -> None:
        """The exchange ended: let go of what is left."""
