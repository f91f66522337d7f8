"""HTTP/2 client connections (TLS with ALPN `h2`), each stream forwarded as an HTTP/1.1 request.

A stream becomes a `Request` that goes through the same routing, upstream
pools and forwarding rules as on HTTP/1.1; targets never see HTTP/2. The
target's HTTP/1.1 response is read again by a per-stream parser and sent on
as HEADERS and DATA frames within the client's flow-control windows. When a
client does not open its window, the stream pauses its target connection
instead of buffering the response; request bodies are acknowledged (window
updates) only once the target connection has taken them.

The frames themselves, stream states and flow control are h2wire.py's; its
connection errors become a GOAWAY and a close.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from proxy.http import headers as h
from proxy.http.buffering import (
    RequestSpool,
    begin_buffered,
    end_exchange,
    spool_body,
    take_expect_continue,
)
from proxy.http.forwarding import Reject, RequestForwarding
from proxy.http.h2wire import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    FrameLayer,
    Http2ConnectionError,
)
from proxy.http.request import Request
from proxy.http.tlswrites import WRITE_HIGH_WATER as TLS_WRITE_HIGH_WATER
from proxy.http.tlswrites import write_records
from proxy.http.upstream import WRITE_HIGH_WATER

if TYPE_CHECKING:
    from proxy.http.contracts import ServerContext
    from proxy.http.request import BufferPolicy

MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 256 * 1024  # request body bytes a stream may send before the target has taken them
CONNECTION_WINDOW = 1024 * 1024  # the same, for all streams of a connection together
PENDING_HIGH = 256 * 1024  # response bytes held for a client's window before the target is paused
# What a stream reads from its target at a time: a stream past PENDING_HIGH holds at most this more.
STREAM_READ_SIZE = 64 * 1024

# Rapid-reset protection (CVE-2023-44487): streams a client may cancel while their
# requests are in progress, per RESET_PERIOD seconds, before the connection is closed.
MAX_RESETS = 200
RESET_PERIOD = 10.0

# Bytes a :path may not contain (the request line to the target is space-separated), and
# the characters of a method token (RFC 9110 5.6.2).
_PATH_FORBIDDEN = bytes(range(0x21)) + b"\x7f"
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Target response headers that are HTTP/1.1 framing or connection-specific (RFC 9113 8.2.2).
_RESPONSE_DROP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)


class Http2Connection(RequestForwarding, asyncio.Protocol):
    """One HTTP/2 client connection: frames in and out, and its streams."""

    __slots__ = (
        "client_ip",
        "closed",
        "closing",
        "flush_scheduled",
        "forwarded_plain",
        "frames",
        "idle_deadline",
        "last_host",
        "last_host_line",
        "log_fields",
        "port",
        "reset_count",
        "reset_period_end",
        "scheme",
        "server",
        "streams",
        "transport",
        "unsent",
        "write_deadline",
        "write_mark",
        "write_paused",
        "written",
    )

    def __init__(self, server: ServerContext, port: int, scheme: bytes = b"https") -> None:
        self.server = server
        self.port = port
        self.scheme = scheme  # http with --h2c
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Http2Stream] = {}
        self.closed = False
        self.closing = False
        self.write_paused = False
        self.unsent: memoryview | None = None  # what a pause left of the frames last taken
        self.write_deadline = 0.0
        self.write_mark = 0
        self.written = 0
        self.flush_scheduled = False
        self.last_host = None
        self.last_host_line = b""
        self.idle_deadline = 0.0
        self.reset_count = 0
        self.reset_period_end = 0.0
        self.frames = FrameLayer(
            self,
            max_streams=MAX_CONCURRENT_STREAMS,
            max_header_list=server.max_head_bytes,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
        )

    # -- connection events --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(
            high=TLS_WRITE_HIGH_WATER if self.scheme == b"https" else WRITE_HIGH_WATER
        )
        self._identify_client(transport, self.port)
        self.frames.start()
        self.flush()
        self.server.connections.add(self)
        # Until the first request, the connection is held to the time limit for a request head.
        self.idle_deadline = self.server.loop.time() + self.server.header_timeout

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.frames.receive(data)
        except Http2ConnectionError as error:
            self.fail(error.code)
            return
        if not self.closed:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        self._drop_streams()

    def _drop_streams(self) -> None:
        """The connection is over (nothing more is sent): stop every exchange still going."""
        for stream in list(self.streams.values()):
            stream.client_gone(499)
        self.streams.clear()

    def pause_writing(self) -> None:
        # The client is not reading what it asked for: stop reading from it, and
        # stop reading its responses from the targets.
        self.write_paused = True
        self.expect_progress()
        if not self.closed:
            self.transport.pause_reading()
        for stream in self.streams.values():
            stream.update_target_flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        unsent = self.unsent
        if unsent is not None:
            self.unsent = None
            self._write(unsent)
            if self.write_paused:
                return
        if not self.closed:
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            stream.send_pending()
        self.flush()

    def flush(self) -> None:
        """Write the frames queued; while the client's socket is full, they stay queued."""
        self.flush_scheduled = False
        if self.write_paused and self.scheme == b"https":  # h2c: the transport buffers, as before
            return
        data = self.frames.take()
        if data and not self.transport.is_closing():
            self._write(data)

    def _write(self, data: bytes | memoryview) -> None:
        """To a TLS client a record at a time, keeping what a pause leaves (tlswrites.py)."""
        if self.scheme != b"https":
            self.written += len(data)
            self.transport.write(data)
            return
        sent = write_records(self.transport, data, self)
        self.written += sent
        if sent < len(data):
            self.unsent = memoryview(data)[sent:]

    def _write_all(self, data: bytes) -> None:
        """Write `data` after what waits, at once: the connection is about to close."""
        unsent = self.unsent
        if unsent is not None:
            self.unsent = None
            self.written += len(unsent)
            self.transport.write(unsent)
        self.written += len(data)
        self.transport.write(data)

    def flush_soon(self) -> None:
        """Write queued frames once this turn of the event loop is over: the responses of many
        streams arriving together leave in one TLS write instead of one each."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.server.loop.call_soon(self.flush)

    # -- frames from the client ---------------------------------------------------

    def on_request(
        self, stream_id: int, method: bytes, path: bytes, authority: bytes, fields: list, ended: bool
    ) -> None:
        if self.closing:
            self.frames.reset_stream(stream_id, REFUSED_STREAM)
            return
        request = Request(time.time(), self.scheme)
        stream = Http2Stream(self, stream_id, request)
        self.streams[stream_id] = stream
        self.idle_deadline = 0.0
        request.complete = ended
        request.method = method
        request.url = path
        try:
            self._read_head(request, authority, fields)
        except Reject as reject:
            stream.respond_error(reject.status)
            return
        stream.start()

    def _read_head(self, request: Request, authority: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        """Fill `request` from a head h2wire.py found well-formed (RFC 9113 8.2, 8.3)."""
        host = b""
        cookies = []
        special = h.REQUEST_SPECIAL
        lengths = h.REQUEST_SPECIAL_LENGTHS
        lines = request.headers
        for name, value in fields:
            if name == b"cookie":
                cookies.append(value)  # HTTP/2 may split cookies; HTTP/1.1 wants one line (8.2.3)
            elif len(name) in lengths and name in special:
                kind = special[name]
                if kind == h.HOST:
                    host = value
                else:
                    self._special_header(request, kind, name, value)
            else:
                lines.append(b"%s: %s\r\n" % (name, value))
        request.host = authority or host
        if not request.host:
            raise Reject(400)
        lines.append(b"host: %s\r\n" % request.host)
        if cookies:
            lines.append(b"cookie: %s\r\n" % b"; ".join(cookies))
        method, url = request.method, request.url
        if method == b"CONNECT":
            raise Reject(405)
        if method.translate(None, _TOKEN) or url[:1] != b"/" or url != url.translate(None, _PATH_FORBIDDEN):
            raise Reject(400)
        if len(url) > self.server.max_url_bytes:
            raise Reject(414)
        limit = self.server.max_body_bytes
        if limit and request.content_length is not None and int(request.content_length) > limit:
            raise Reject(413)
        request.is_head = request.method == b"HEAD"
        request.keep_alive = True
        if not request.complete and request.content_length is None:
            request.chunked = True  # a body of unknown length: chunked to the target

    def on_data(self, stream_id: int, data: memoryview, flow_length: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            # A stream already answered: its window must still be given back.
            self.frames.acknowledge(stream_id, flow_length)
            return
        stream.body_received(data, flow_length)

    def on_stream_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.request_ended()

    def on_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.client_gone(499)
        self._count_reset()

    def on_stream_error(self, stream_id: int) -> None:
        """h2wire.py reset a stream for the client's protocol error in it: its exchange ends, and counts as
        a cancel (a frame that breaks the rules must not be a way around the rapid-reset limit)."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.client_gone(400)
            self._count_reset()

    def _count_reset(self) -> None:
        now = self.server.loop.time()
        if now > self.reset_period_end:
            self.reset_period_end = now + RESET_PERIOD
            self.reset_count = 0
        self.reset_count += 1
        if self.reset_count > MAX_RESETS:
            self.fail(ENHANCE_YOUR_CALM)

    def on_window(self, stream_id: int) -> None:
        """The client opened a stream's window, or (0) the connection's or every stream's."""
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.send_pending()
        else:
            self._send_all_pending()

    def on_goaway(self, error_code: int) -> None:
        """A client going away without error lets its streams in flight finish, as ours does; with an
        error they end with the connection, after what was already framed (never a frame cut in half)."""
        if error_code == NO_ERROR and self.streams:
            self.closing = True  # closed once the last stream is done (stream_done)
            return
        self.closed = True
        self._write_all(self.frames.take())
        self.transport.close()
        self._drop_streams()

    def _send_all_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending:
                stream.send_pending()

    # -- streams ---------------------------------------------------------------------

    def stream_done(self, stream: Http2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if self.streams:
            return
        if self.closing:
            self.close()
        else:
            self.idle_deadline = self.server.loop.time() + self.server.idle_timeout

    # -- ending ---------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Server stopping: tell the client no new streams will be served; close when the last ends."""
        if self.closed or self.closing:
            return
        self.closing = True
        self.frames.goaway(NO_ERROR)  # the streams in flight still finish; new ones are refused
        self._write_all(self.frames.take())
        if not self.streams:
            self.close()

    def close(self) -> None:
        """A GOAWAY without error, then close once buffered frames are sent."""
        if self.closed:
            return
        self.fail(NO_ERROR)

    def fail(self, error_code: int) -> None:
        """GOAWAY with `error_code` (the client's misbehaviour, or none), then close."""
        if self.closed:
            return
        self.closed = True
        self.frames.goaway(error_code)
        self.flush_scheduled = False
        if not self.transport.is_closing():
            self._write_all(self.frames.take())
        self.transport.close()
        self._drop_streams()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    # -- deadlines (read by the server's sweeper) ----------------------------------

    def expect_progress(self) -> None:
        """Response bytes are waiting (a full socket, or a stream's closed window): with a write
        timeout, the client must take some of them within it or the connection is cut. Like
        HTTP/1.1's, it measures progress, so a slow but steady download goes on."""
        timeout = self.server.write_timeout
        if timeout and not self.write_deadline:
            self.write_mark = self._delivered()
            self.write_deadline = self.server.loop.time() + timeout

    def _delivered(self) -> int:
        return self.written - self.transport.get_write_buffer_size()

    def _waiting_output(self) -> bool:
        return self.write_paused or any(stream.pending for stream in self.streams.values())

    @property
    def deadline(self) -> float:
        if not self.streams:
            deadline = self.idle_deadline
        else:
            deadline = min((s.deadline for s in self.streams.values() if s.deadline), default=0.0)
        write = self.write_deadline
        return write if write and (not deadline or write < deadline) else deadline

    def deadline_expired(self) -> None:
        now = self.server.loop.time()
        if self.write_deadline and self.write_deadline <= now:
            self.write_deadline = 0.0
            if self._waiting_output():
                if self._delivered() <= self.write_mark:
                    self.abort()  # nothing taken for a whole write timeout
                    self._drop_streams()
                    return
                self.expect_progress()
        if not self.streams:
            if self.idle_deadline and self.idle_deadline <= now:
                self.idle_deadline = 0.0
                self.close()
            return
        for stream in list(self.streams.values()):
            if stream.deadline and stream.deadline <= now:
                stream.deadline = 0.0
                stream.timed_out()
        self.flush()


class Http2Stream:
    """One request/response exchange: the client the upstream connection relays to.

    It is the `Downstream` (request.py) its upstream connection answers, and is
    its own `transport`: the HTTP/1.1 response bytes written to it are parsed
    and become HEADERS and DATA frames.
    """

    __slots__ = (
        "acked_later",
        "closed",
        "connection",
        "deadline",
        "ending",
        "headers_sent",
        "log_fields",
        "parser",
        "pending",
        "pending_bytes",
        "request",
        "response_headers",
        "stream_id",
        "upload_paused",
    )

    closing = False
    protocol = b"HTTP/2.0"
    read_size = STREAM_READ_SIZE
    replays = None  # requests arrive as frames, not reads: none is answered again (proxy/http/replay.py)
    downstream = None  # what a ResponseBuffer has instead: it stands between a target and its client

    def __init__(self, connection: Http2Connection, stream_id: int, request: Request) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.request = request
        self.log_fields = connection.log_fields
        self.parser = httptools.HttpResponseParser(self)
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.ending = False
        self.closed = False
        self.upload_paused = False
        self.acked_later = 0
        self.deadline = 0.0

    @property
    def transport(self) -> Http2Stream:
        return self

    @property
    def write_paused(self) -> bool:
        """Whether the target should stop sending: the client's socket or this stream's backlog is full."""
        return self.connection.write_paused or self.pending_bytes > PENDING_HIGH

    # -- the request ------------------------------------------------------------------

    def start(self) -> None:
        request = self.request
        connection = self.connection
        answer = connection.server.dispatcher.route(request)
        if answer:
            if answer.__class__ is int:
                self.respond_error(answer)
            else:
                self.respond(answer)
            return
        if not request.pool.answers_itself:
            request.head = connection._upstream_head(request)
        if request.buffering is not None:
            self._start_buffered(request, request.buffering)
            return
        server = connection.server
        # Until the body is in: the head's time limit between DATA frames (one stream must not hold a
        # target connection forever); then the target's time to answer.
        timeout = request.target_timeout if request.complete else server.header_timeout
        self.deadline = server.loop.time() + timeout
        request.pool.acquire(request, self)

    def _start_buffered(self, request: Request, policy: BufferPolicy) -> None:
        """As ClientConnection._start_buffered: the body read whole first, and/or the response kept
        whole; the stream's window is given back as the body is kept, or the client would stall."""
        server = self.connection.server
        to_target, spooled = begin_buffered(request, self, policy, server.log)
        if not spooled:
            timeout = request.target_timeout if request.complete else server.header_timeout
            self.deadline = server.loop.time() + timeout
            request.pool.acquire(request, to_target)
            return
        spool = spool_body(request, self, to_target, policy, server.log)
        if spool is None:
            self.respond_error(413)
            return
        self._give_back_window()  # what arrived while a paused service held it is kept now
        if request.complete:
            self.deadline = 0.0  # the target's time starts once the body is sent
            spool.finish()
            return
        if take_expect_continue(request):
            self._send_headers(100, [])
            self.connection.flush_soon()
        self.deadline = server.loop.time() + server.header_timeout

    def start_again(self, request: Request) -> None:
        """Route the request anew and go on with it: a pool that held it (a paused service) lets it go."""
        if not self.closed:
            self.start()

    def body_received(self, data: memoryview, flow_length: int) -> None:
        request = self.request
        if self.deadline and not request.response_started:
            server = self.connection.server
            self.deadline = server.loop.time() + server.header_timeout
        if self.ending or not data:
            # Answered already, or an empty DATA frame (often the one carrying END_STREAM): as a
            # chunk it would read "0\r\n\r\n", the end of the body, and the real end would follow it.
            self.connection.frames.acknowledge(self.stream_id, flow_length)
            return
        request.had_body = True
        limit = self.connection.server.max_body_bytes
        if limit:
            request.body_received += len(data)
            if request.body_received > limit:
                self.connection.frames.acknowledge(self.stream_id, flow_length)
                self.too_large()
                return
        upstream = request.upstream
        if upstream is not None and upstream.attached and upstream.request is request:
            transport = upstream.transport
            if request.chunked:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            elif transport.get_write_buffer_size():
                data = bytes(data)  # a view kept in the write buffer would keep the whole read it is part of
            transport.write(data)
            if self.upload_paused:
                self.acked_later += flow_length
            else:
                self.connection.frames.acknowledge(self.stream_id, flow_length)
            return
        spool = request.body
        if spool.__class__ is RequestSpool:
            if spool.write(data):
                self.connection.frames.acknowledge(self.stream_id, flow_length)
                self.too_large()  # over the service's limit: the target never sees it
            elif self.upload_paused:
                self.acked_later += flow_length  # the disk is behind: given back once it catches up
            else:
                self.connection.frames.acknowledge(self.stream_id, flow_length)
            return
        # The target connection is not ready: hold the bytes (a copy: `data` is a view), and their window.
        data = b"%x\r\n%s\r\n" % (len(data), data) if request.chunked else bytes(data)
        if request.body is None:
            request.body = [data]
        else:
            request.body.append(data)
        self.acked_later += flow_length

    def request_ended(self) -> None:
        request = self.request
        request.complete = True
        if self.ending:
            return
        spool = request.body
        if spool.__class__ is RequestSpool:
            # Whole: it goes to the target once on disk, and the target's time starts once it is sent.
            self.deadline = 0.0
            spool.finish()
            return
        if request.chunked:
            upstream = request.upstream
            if upstream is not None and upstream.attached and upstream.request is request:
                upstream.transport.write(b"0\r\n\r\n")
            elif request.body is None:
                request.body = [b"0\r\n\r\n"]
            else:
                request.body.append(b"0\r\n\r\n")
        if request.pool is not None and not request.response_started:
            self.deadline = self.connection.server.loop.time() + request.target_timeout
        else:
            self.deadline = 0.0

    def _give_back_window(self) -> None:
        """Acknowledge held request-body bytes; also when the stream has ended, as the connection's
        window, which all streams share, is then still credited."""
        if self.acked_later and not self.connection.closed:
            self.connection.frames.acknowledge(self.stream_id, self.acked_later)
            self.connection.flush_soon()
        self.acked_later = 0

    # -- Downstream: what the upstream connection calls ----------------------------------

    def pause_reading_for_upstream(self) -> None:
        self.upload_paused = True
        if not self.request.complete and not self.request.response_started:
            self.deadline = 0.0  # no stall deadline: the delay is the proxy's, not the client's

    def resume_reading_for_upstream(self) -> None:
        if self.upload_paused:
            self.upload_paused = False
            request = self.request
            if not request.complete and not request.response_started and not self.closed:
                server = self.connection.server
                self.deadline = server.loop.time() + server.header_timeout
            self._give_back_window()

    def request_sent(self, request: Request) -> None:
        """A buffered body is all with the target: its time to answer starts."""
        if not self.closed and not request.response_started:
            self.deadline = self.connection.server.loop.time() + request.target_timeout

    def body_flushed(self) -> None:
        if not self.upload_paused:
            self._give_back_window()

    def write(self, data: bytes | memoryview) -> None:
        """HTTP/1.1 response bytes from the target (or our own error page)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()
        self.connection.flush_soon()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return 0  # the bytes were copied into frames or `pending`: the target's buffer is free

    def response_finished(self, request: Request) -> None:
        self.connection.server.log_request(self, request)
        self.ending = True
        self._end_if_sent()

    def upstream_failed(self, request: Request, status: int) -> None:
        if not self.closed:
            self.respond_error(status)

    def abort(self) -> None:
        """The response broke off midway: the client must not take it as complete."""
        if self.closed:
            return
        self.request.status = self.request.status or 502
        self.connection.server.log_request(self, self.request)
        self._reset(INTERNAL_ERROR)

    def timed_out(self) -> None:
        """The request body stalled (408), or the target did not answer in time (504)."""
        request = self.request
        upstream = request.upstream
        if not request.complete:
            self._stop_exchange()
            if request.response_started:
                self.abort()
            else:
                self.respond_error(408)
        elif upstream is not None:
            upstream.cancel(504)

    def too_large(self) -> None:
        """The request body went over the limit: the target must not get the rest (413)."""
        self._stop_exchange()
        if self.request.response_started:
            self.abort()
        else:
            self.respond_error(413)

    def _stop_exchange(self) -> None:
        """End what serves the request: its spooled body, its target connection or response buffer."""
        request = self.request
        spool = request.body
        if spool.__class__ is RequestSpool:
            spool.discard()
        upstream = request.upstream
        if upstream is not None:
            end_exchange(upstream, self)

    def client_gone(self, status: int) -> None:
        """The client reset the stream or the connection closed: stop the exchange."""
        if self.closed:
            return
        self.closed = True
        request = self.request
        self._stop_exchange()
        if not self.ending:
            request.status = request.status or status
            self.connection.server.log_request(self, request)
        self._give_back_window()
        self.connection.stream_done(self)

    # -- the response -------------------------------------------------------------------

    def respond(self, response: bytes) -> None:
        """Answer with a complete HTTP/1.1 response of the proxy's own (error pages, redirects)."""
        request = self.request
        spool = request.body
        if spool.__class__ is RequestSpool:
            spool.discard()  # a body kept for a target that failed (refused, cut while connecting)
        request.status = int(response[9:12])
        self.write(response)
        self.response_finished(request)

    def respond_error(self, status: int) -> None:
        request = self.request
        self.respond(self.connection.server.error_response(status, request.is_head, request.pages))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _RESPONSE_DROP:
            self.response_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        fields = self.response_headers
        self.response_headers = []
        if status < 200:
            if status == 101:
                self.abort()  # no protocol switch on an HTTP/2 stream
                return
            self._send_headers(status, fields)  # 100 Continue, 103 Early Hints
            return
        self.headers_sent = True
        self._send_headers(status, fields)

    def _send_headers(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        if not self.closed:
            self.connection.frames.send_headers(self.stream_id, status, fields)

    def on_body(self, body: bytes) -> None:
        if self.closed:
            return
        if self.pending or self.connection.write_paused:
            self.pending.append(body)
            self.pending_bytes += len(body)
            self.update_target_flow()
            return
        sent = self.connection.frames.send_data(self.stream_id, body)
        if sent < len(body):
            rest = body[sent:]
            self.pending.append(rest)
            self.pending_bytes += len(rest)
            self.update_target_flow()
            self.connection.expect_progress()  # the client's window is closed

    def send_pending(self) -> None:
        """The client opened its window: send what waits, then end the stream if the response has."""
        pending = self.pending
        connection = self.connection
        while pending and not self.closed and not connection.write_paused:
            chunk = pending[0]
            sent = self.connection.frames.send_data(self.stream_id, chunk)
            self.pending_bytes -= sent
            if sent < len(chunk):
                pending[0] = chunk[sent:]
                break
            pending.popleft()
        self.update_target_flow()
        self._end_if_sent()

    def update_target_flow(self) -> None:
        """Pause the target connection while the client cannot take more, resume when it can."""
        upstream = self.request.upstream
        if upstream is None or not upstream.attached or upstream.client is not self:
            return
        if self.write_paused:
            upstream.pause()
        else:
            upstream.resume()

    def _end_if_sent(self) -> None:
        if not self.ending or self.pending or self.closed:
            return
        self.closed = True
        frames = self.connection.frames
        if self.headers_sent:
            frames.end_stream(self.stream_id)
        else:
            frames.reset_stream(self.stream_id, INTERNAL_ERROR)
        if not self.request.complete:
            # Answered before the client finished sending: ask it to stop (RFC 9113 8.1).
            frames.reset_stream(self.stream_id, NO_ERROR)
        self._give_back_window()
        self.connection.flush_soon()
        self.connection.stream_done(self)

    def _reset(self, error_code: int) -> None:
        self.closed = True
        self.ending = True
        self._stop_exchange()
        self.connection.frames.reset_stream(self.stream_id, error_code)
        self._give_back_window()
        self.connection.flush_soon()
        self.connection.stream_done(self)
