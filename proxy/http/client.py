"""Client side of the data plane: one HTTP/1.1 connection from a browser or load balancer.

Requests are parsed with httptools. Each request head is filtered as its
headers arrive, so forwarding it is one join. Pipelined requests are queued
and answered in order. Bodies stream to the target as they arrive, re-framed
when chunked so the target never sees the client's framing (no smuggling),
unless the service buffers them (buffering.py). A body that makes no progress
for the header timeout while the proxy is reading it gets a 408 (an abort once
a response has started), so a client cannot hold a target connection by
sending a head and part of its body.
"""

from __future__ import annotations

import asyncio
import time
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
from proxy.http.http2 import Http2Connection
from proxy.http.replay import MAX_REQUEST
from proxy.http.request import Request
from proxy.http.responses import error_response
from proxy.http.tlslistener import ACME_TLS_ALPN
from proxy.http.tlswrites import WRITE_HIGH_WATER as TLS_WRITE_HIGH_WATER
from proxy.http.upstream import READ_BUFFER_SIZE, WRITE_HIGH_WATER

if TYPE_CHECKING:
    from proxy.http.contracts import ServerContext
    from proxy.http.replay import Replay, Replays
    from proxy.http.request import BufferPolicy
    from proxy.http.upstream import UpstreamConnection

MAX_PIPELINED = 16
MAX_BUFFERED_BODY = 1024 * 1024

# Why the client's socket is not being read (a bit each).
_PAUSE_UPSTREAM = 1  # the target is not taking the request body fast enough
_PAUSE_QUEUE = 2  # too many pipelined requests waiting
_PAUSE_BODY = 4  # body arriving before the target connection is ready
_PAUSE_WRITE = 8  # the client is not taking its responses: the next request waits
# While any of these holds, a body's stall deadline is off: the delay is the proxy's, not the client's.

# What the connection's deadline is for.
IDLE = 1
HEADER = 2
RESPONSE = 3
LINGER = 4
WRITE = 5
BODY = 6  # a request body arriving: no progress for the header timeout gets 408
RESTING = 7  # between requests, before REST_SECONDS have passed; then IDLE for the rest of the idle timeout

# After a final error response, how long a client that is still sending may go on
# before the connection closes (so it reads the response rather than a reset).
LINGER_SECONDS = 2.0

# How long a connection between requests keeps its parser and per-connection header lines. A client
# that goes on at once (a page's next request, a load test) finds them there; one that stays idle
# longer lets them go (about 1.2 KB of its 4 KiB budget: see `_rest`) and rebuilds them with its next
# request, for about half a microsecond.
REST_SECONDS = 1.0


class ClientConnection(RequestForwarding, asyncio.Protocol):
    """Reads requests, hands them to targets, and writes responses back in order.

    Over TLS, a client that chose HTTP/2 by ALPN is handed to an `Http2Connection` at once.
    """

    read_size = READ_BUFFER_SIZE

    __slots__ = (
        "client_ip",
        "closed",
        "closing",
        "deadline",
        "deadline_kind",
        "forwarded_plain",
        "fresh_read",
        "head_read",
        "head_size",
        "in_head",
        "last_host",
        "last_host_line",
        "log_fields",
        "parser",
        "pause_reasons",
        "pending_reject",
        "port",
        "queue",
        "reading",
        "replays",
        "scheme",
        "server",
        "start_waiting",
        "transport",
        "tunnel",
        "tunnel_backlog",
        "upgraded",
        "write_backlog",
        "write_paused",
    )

    protocol = b"HTTP/1.1"  # as the access log names it; HTTP/1.0 requests say so themselves
    downstream = None  # what a ResponseBuffer has instead: it stands between a target and its client

    def __init__(self, server: ServerContext, scheme: bytes, port: int) -> None:
        self.server = server
        self.scheme = scheme
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None  # made once the connection is HTTP/1.1
        self.queue: list[Request] = []  # pipelined requests, oldest first (an empty deque is 760 B)
        self.reading: Request | None = None
        self.in_head = False
        self.head_read = 0
        self.head_size = 0
        self.closed = False
        self.closing = False
        self.write_paused = False
        self.write_backlog = 0
        self.pause_reasons = 0
        self.pending_reject = 0
        self.start_waiting = False
        self.deadline = 0.0
        self.deadline_kind = 0
        self.upgraded = False
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_backlog: list[bytes] | None = None  # an upgrade's early bytes, until the target switches
        self.last_host = None
        self.last_host_line = b""
        self.replays: Replays | None = server.replays.get(scheme)
        self.fresh_read: bytes | None = None

    # -- connection events --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.scheme == b"https":
            protocol = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            if protocol == "h2":
                http2 = Http2Connection(self.server, self.port)
                transport.set_protocol(http2)
                http2.connection_made(transport)
                return
            if protocol == ACME_TLS_ALPN:
                transport.close()  # a CA validating TLS-ALPN-01: the handshake was the whole exchange
                return
        self.transport = transport
        transport.set_write_buffer_limits(
            high=TLS_WRITE_HIGH_WATER if self.scheme == b"https" else WRITE_HIGH_WATER
        )
        self._identify_client(transport, self.port)
        self.parser = httptools.HttpRequestParser(self)
        self.server.connections.add(self)
        self._await_next()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        if self.closed or self.pending_reject:
            return
        if self.upgraded:
            self._buffer_for_tunnel(data)
            return
        woke = self.parser is None
        if woke:
            self._wake()
        replays = self.replays
        if replays is not None and self.reading is None and not self.queue and len(data) <= MAX_REQUEST:
            replay = replays.find(data, self.server.loop.time())
            if replay is not None and not self.write_paused and not self.closing:
                self._replay(replay)
                return
            self.fresh_read = data  # a read that may hold one whole request: its answer may be kept
        if self.in_head:
            self.head_read += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._reject(cause.status if isinstance(cause, Reject) else 400)
            return
        except httptools.HttpParserError:
            self._reject(400)
            return
        finally:
            self.fresh_read = None
        if woke and not self.in_head and not self.queue:
            self._rest()  # woken for bytes that began nothing (a stray CRLF): rest again
        elif self.in_head:
            if self.head_read > self.server.max_head_bytes:
                # A head still unfinished after this much: do not keep buffering it.
                self._reject(431)
            elif self.deadline_kind != HEADER and not self.queue:
                # Set once per head, when it does not arrive whole: a trickle cannot extend it.
                self._set_deadline(HEADER, self.server.header_timeout)

    def _replay(self, replay: Replay) -> None:
        """Answer a read that repeats, byte for byte, a request answered from memory before."""
        started_at = time.time()
        self.transport.write(replay.response)
        self.server.log_replayed(self, replay, started_at)
        self._await_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel = None
            tunnel.transport.close()
        queue = self.queue
        if queue:
            first = queue[0]
            self._stop_exchange(first)
            if not first.status:
                first.status = 499
            self.server.log_request(self, first)
            queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.server.write_timeout:
            self._arm_write_deadline()
        upstream = self._relaying_upstream()
        if upstream is not None and upstream.attached:
            upstream.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.deadline_kind == WRITE:
            if self.queue or self.tunnel is not None:
                self._clear_deadline()
            else:
                self._await_next()
        if self.start_waiting:
            self.start_waiting = False
            self._resume(_PAUSE_WRITE)
            if self.queue and not self.closed:  # (a request rejected meanwhile has emptied the queue)
                self._start(self.queue[0])
            return
        upstream = self._relaying_upstream()
        if upstream is not None:
            upstream.resume()

    def _relaying_upstream(self) -> UpstreamConnection | None:
        """The target connection writing to this client now, if any: not one writing to a response
        buffer (buffering.py), whose pace is the disk's and the buffer's own business."""
        if self.tunnel is not None:
            return self.tunnel
        upstream = self.queue[0].upstream if self.queue else None
        return upstream if upstream is not None and upstream.client is self else None

    def _pause(self, reason: int) -> None:
        if not self.pause_reasons and not self.closed:
            self.transport.pause_reading()
            if self.deadline_kind == BODY:
                self.deadline = 0.0  # off while the proxy is not reading
        self.pause_reasons |= reason

    def _resume(self, reason: int) -> None:
        if self.pause_reasons & reason:
            self.pause_reasons &= ~reason
            if not self.pause_reasons and not self.closed:
                self.transport.resume_reading()
                if self.deadline_kind == BODY:
                    self.deadline = self.server.loop.time() + self.server.header_timeout

    def pause_reading_for_upstream(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        if self.pause_reasons & _PAUSE_UPSTREAM:  # (called at the end of every exchange)
            self._resume(_PAUSE_UPSTREAM)

    def body_flushed(self) -> None:
        self._resume(_PAUSE_BODY)

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self.reading = Request(time.time(), self.scheme)
        self.in_head = True
        self.head_read = 0
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        request = self.reading
        request.url += url
        if len(request.url) > self.server.max_url_bytes:
            raise Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer of a chunked body: not forwarded
        request = self.reading
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.server.max_head_bytes:
            raise Reject(431)
        kind = h.REQUEST_KIND_BY_SPELLING.get(name)
        if kind is None:
            kind = h.learn_request_header(name)
        if kind:
            self._special_header(request, kind, name, value)
            return
        request.headers.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        request = self.reading
        parser = self.parser
        self.in_head = False
        keep_alive = parser.should_keep_alive()
        if keep_alive and request.connection is None and not request.proxy_connection:
            # llhttp takes HTTP/0.9, 1.0, 1.1 and 2.0 only, and keeps a request with neither header alive
            # only on 1.1: that spares get_http_version, which formats a str.
            request.http10 = False
        else:
            version = parser.get_http_version()
            if version == "1.1":
                request.http10 = False
            elif version == "1.0":
                request.http10 = True
            else:
                raise Reject(400)
        if not request.host and not request.http10:
            raise Reject(400)
        if request.http10 and request.chunked:
            raise Reject(400)  # chunked framing does not exist in HTTP/1.0 (RFC 9112 6.1)
        method = parser.get_method()
        if method == b"CONNECT":
            raise Reject(405)
        limit = self.server.max_body_bytes
        # httptools has rejected a Content-Length that is not a number by now.
        if limit and request.content_length is not None and int(request.content_length) > limit:
            raise Reject(413)
        request.method = method
        request.is_head = method == b"HEAD"
        request.keep_alive = keep_alive
        if not request.chunked and (request.content_length is None or not int(request.content_length)):
            # No body to wait for: a response made at once (pythrust's cache, files) keeps the connection.
            request.complete = True
        if request.connection is not None:
            self._apply_connection_header(request)
        elif request.upgrade is not None:
            request.upgrade = None
        if self.closed:
            return  # answered and closing (a response made before this pipelined request was read)
        queue = self.queue
        queue.append(request)
        if len(queue) == 1:
            self._start(request)
        elif len(queue) >= MAX_PIPELINED:
            self._pause(_PAUSE_QUEUE)

    def _apply_connection_header(self, request: Request) -> None:
        if request.upgrade is None and request.connection.lower() in (b"keep-alive", b"close"):
            return  # what browsers send: nothing to do beyond what the parser did
        tokens = h.connection_tokens(request.connection)
        if request.upgrade is not None and b"upgrade" not in tokens:
            request.upgrade = None
        if request.upgrade is not None:
            if request.chunked or request.content_length not in (None, b"0"):
                # The parser ends an upgrade request at its head: a body would reach the
                # target only as tunnel bytes, or be taken as the next request.
                raise Reject(400)
            request.keep_alive = False
        extra = [t for t in tokens if t not in (b"close", b"keep-alive", b"upgrade")]
        if extra:
            request.headers = [
                line for line in request.headers if line.split(b":", 1)[0].lower() not in extra
            ]

    def on_body(self, body: bytes) -> None:
        request = self.reading
        request.had_body = True
        if self.server.max_body_bytes:
            request.body_received += len(body)
            if request.body_received > self.server.max_body_bytes:
                raise Reject(413)
        if self.deadline_kind == BODY and not self.pause_reasons:
            self.deadline = self.server.loop.time() + self.server.header_timeout
        upstream = request.upstream
        if upstream is not None and upstream.attached and upstream.request is request:
            if request.chunked:
                upstream.transport.writelines((b"%x\r\n" % len(body), body, b"\r\n"))
            else:
                upstream.transport.write(body)
            return
        spool = request.body
        if spool is not None and spool.__class__ is RequestSpool:
            if spool.write(body) and not self.closed:
                self._respond_error(request, 413)  # over the service's limit: the target never sees it
            return
        if request.chunked:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        self._buffer_body(request, body)

    def _buffer_body(self, request: Request, data: bytes) -> None:
        if request.body is None:
            request.body = [data]
        else:
            request.body.append(data)
        request.body_size += len(data)
        if request.body_size > MAX_BUFFERED_BODY:
            self._pause(_PAUSE_BODY)

    def on_message_complete(self) -> None:
        request = self.reading
        self.reading = None
        if not request.complete:  # (a request without a body was complete at its head)
            request.complete = True
            spool = request.body
            if spool is not None and spool.__class__ is RequestSpool:
                # Whole: it goes to the target once on disk, and the target's time starts once it is sent.
                if self.queue and self.queue[0] is request:
                    self._clear_deadline()
                spool.finish()
                return
            if request.chunked:
                upstream = request.upstream
                if upstream is not None and upstream.attached and upstream.request is request:
                    upstream.transport.write(b"0\r\n\r\n")
                else:
                    self._buffer_body(request, b"0\r\n\r\n")
        if (
            self.deadline_kind != RESPONSE  # (set by _start for a request complete at its head)
            and self.queue
            and self.queue[0] is request
            and not request.response_started
            and request.pool
        ):
            self._set_deadline(RESPONSE, request.target_timeout)

    # -- dispatching ----------------------------------------------------------------

    def _start(self, request: Request) -> None:
        if self.write_paused:
            # The client is not taking the responses already sent: this request waits (and no more is
            # read) until it catches up. Answers made at once (pythrust's cache, files) would otherwise
            # pile up in memory for a client that pipelines and never reads.
            self.start_waiting = True
            self._pause(_PAUSE_WRITE)
            return
        answer = self.server.dispatcher.route(request)
        if answer:
            if answer.__class__ is int:
                self._respond_error(request, answer)
            else:
                self._respond_with(request, int(answer[9:12]), answer)
            return
        pool = request.pool
        if not pool.answers_itself:
            request.head = self._upstream_head(request)
        if request.buffering is not None:
            self._start_buffered(request, request.buffering)
            return
        if request.complete:
            self._set_deadline(RESPONSE, request.target_timeout)
        else:
            self._set_deadline(BODY, self.server.header_timeout)
        pool.acquire(request, self)

    def _start_buffered(self, request: Request, policy: BufferPolicy) -> None:
        """A service that buffers bodies (buffering.py): the request's read whole before the target is
        asked, and/or the response kept whole before the client gets it."""
        to_target, spooled = begin_buffered(request, self, policy, self.server.log)
        if not spooled:
            if request.complete:
                self._set_deadline(RESPONSE, request.target_timeout)
            else:
                self._set_deadline(BODY, self.server.header_timeout)
            request.pool.acquire(request, to_target)
            return
        spool = spool_body(request, self, to_target, policy, self.server.log)
        if spool is None:
            self._respond_error(request, 413)
            return
        if take_expect_continue(request) and not request.http10 and not request.complete:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.body_size = 0
        self._resume(_PAUSE_BODY)
        if request.complete:
            self._clear_deadline()  # the target's time starts once the body is sent (request_sent)
            spool.finish()
        else:
            self._set_deadline(BODY, self.server.header_timeout)

    def request_sent(self, request: Request) -> None:
        """A buffered body is all with the target: its time to answer starts."""
        if not self.closed and self.queue and self.queue[0] is request and not request.response_started:
            self._set_deadline(RESPONSE, request.target_timeout)

    def start_again(self, request: Request) -> None:
        """Route `request` anew and go on with it: a pool that held it (a paused service) lets it go."""
        if not self.closed and self.queue and self.queue[0] is request:
            self._start(request)

    def response_finished(self, request: Request) -> None:
        """The target finished the response to the request at the head of the queue."""
        queue = self.queue
        if queue and queue[0] is request:
            queue.pop(0)
        self.server.log_request(self, request)
        if self.closed:
            return
        if not request.keep_alive or not request.complete or self.closing:
            self.close()
            return
        if self.pause_reasons & _PAUSE_QUEUE and len(queue) < MAX_PIPELINED:
            self._resume(_PAUSE_QUEUE)
        if queue:
            self._start(queue[0])
        elif self.pending_reject:
            self._reject(self.pending_reject)
        else:
            self._await_next()

    def upstream_failed(self, request: Request, status: int) -> None:
        """The target could not be reached or did not answer in time."""
        if self.closed:
            return
        self._respond_error(request, status)

    def _respond_error(self, request: Request, status: int) -> None:
        response = self.server.error_response(status, request.is_head, request.pages)
        self._respond_with(request, status, response)

    def _respond_with(self, request: Request, status: int, response: bytes) -> None:
        """Answer `request` with a response of the proxy's own, then close."""
        spool = request.body
        if spool.__class__ is RequestSpool:
            spool.discard()  # a body kept for a target that failed (refused, cut while connecting)
        request.status = status
        if self.queue and self.queue[0] is request:
            self.queue.pop(0)
        self.server.log_request(self, request)
        self._send_last(response)

    def _reject(self, status: int) -> None:
        """Answer a request the proxy cannot parse or accept, then close."""
        if self.closed:
            return
        queue = self.queue
        if queue:
            first = queue[0]
            if first is not self.reading:
                # Requests before the broken one are still being answered: answer
                # them, then the error (see response_finished), and read no more.
                self.pending_reject = status
                return
            if first.response_started:
                self.abort()
                return
            # The broken request is the one being forwarded: the target must not
            # see the rest of it.
            self._stop_exchange(first)
            queue.clear()
        request = self.reading or Request(time.time(), self.scheme)
        request.status = status
        self.server.log_request(self, request)
        self._send_last(error_response(status))

    def _stop_exchange(self, request: Request) -> None:
        """End what serves `request`: its spooled body, its target connection or response buffer."""
        spool = request.body
        if spool is not None and spool.__class__ is RequestSpool:
            spool.discard()
        upstream = request.upstream
        if upstream is not None:
            end_exchange(upstream, self)

    def _body_stalled(self) -> None:
        """The request body made no progress for the header timeout: 408 (an abort once a response
        has started), and the target connection is let go."""
        request = self.queue[0] if self.queue else None
        if request is None or request.complete:
            return
        self._stop_exchange(request)
        if request.response_started:
            self.abort()  # connection_lost logs it
        else:
            self._respond_error(request, 408)

    def _send_last(self, response: bytes) -> None:
        """Write a final response, then half-close and discard what the client still sends.

        Closing at once with unread input makes the kernel send a reset, and a
        client still uploading would lose the response in it.
        """
        self.closed = True
        transport = self.transport
        transport.write(response)
        if not transport.can_write_eof():  # TLS: close_notify ends the stream after the response
            transport.close()
            return
        transport.write_eof()
        if self.pause_reasons:
            self.pause_reasons = 0
            transport.resume_reading()
        self._set_deadline(LINGER, LINGER_SECONDS)

    def begin_shutdown(self) -> None:
        """Server stopping: close now if idle (or a tunnel), else after the response in progress."""
        self.closing = True
        if self.tunnel is not None or (not self.queue and not self.in_head and not self.closed):
            self.close()

    def close(self) -> None:
        """Close once what is buffered for the client has been sent (within the write timeout)."""
        self.closed = True
        self.deadline = 0.0
        self.transport.close()
        if self.server.write_timeout and self.transport.get_write_buffer_size():
            self._arm_write_deadline()

    def abort(self) -> None:
        """Cut the connection at once (a response broke off midway)."""
        if not self.closed:
            self.closed = True
            self.deadline = 0.0
            self.transport.abort()

    # -- upgrades (WebSocket) -----------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        self.upgraded = True
        if rest:
            self._buffer_for_tunnel(rest)

    def _buffer_for_tunnel(self, data: bytes) -> None:
        """Hold what the client sends after its upgrade request until the target switches."""
        if self.tunnel_backlog is None:
            self.tunnel_backlog = [data]
        else:
            self.tunnel_backlog.append(data)
        if sum(map(len, self.tunnel_backlog)) > MAX_BUFFERED_BODY:
            self._pause(_PAUSE_BODY)

    def tunnel_opened(self, request: Request, upstream: UpstreamConnection) -> None:
        """The target switched protocols: relay raw bytes both ways from now on."""
        self.tunnel = upstream
        self.deadline = 0.0
        self.queue.clear()
        self.server.log_request(self, request)
        if self.tunnel_backlog:
            upstream.transport.writelines(self.tunnel_backlog)
            self.tunnel_backlog = None
            self._resume(_PAUSE_BODY)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    # -- deadlines ------------------------------------------------------------------

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.server.loop.time() + seconds

    def _clear_deadline(self) -> None:
        self.deadline_kind = 0
        self.deadline = 0.0

    def _arm_write_deadline(self) -> None:
        """The write timeout is a time without progress, not a limit on the whole response: a long
        download or event stream goes on as long as the client keeps reading (thruster cut them)."""
        self.write_backlog = self.transport.get_write_buffer_size()
        self._set_deadline(WRITE, self.server.write_timeout)

    def _await_next(self) -> None:
        server = self.server
        if self.write_paused and server.write_timeout:
            self._arm_write_deadline()  # the last response is still stuck in the client's socket
        elif self.in_head:
            self.deadline_kind = HEADER
            self.deadline = server.loop.time() + server.header_timeout
        elif server.idle_timeout > REST_SECONDS:
            self.deadline_kind = RESTING
            self.deadline = server.loop.time() + REST_SECONDS
        else:
            self.deadline_kind = IDLE
            self.deadline = server.loop.time() + server.idle_timeout

    def _rest(self) -> None:
        """Between requests for REST_SECONDS: let go of what the next request can rebuild, so that an
        idle keep-alive connection holds little more than its transport (the parser alone is 900 B)."""
        self.parser = None
        self.last_host = None
        self.last_host_line = b""
        self.forwarded_plain = self.log_fields = b""

    def _wake(self) -> None:
        """Bytes for a connection that rested: its parser and header lines again."""
        self.parser = httptools.HttpRequestParser(self)
        self._note_connection_lines(self.port)

    def deadline_expired(self) -> None:
        """Called by the server's sweeper once `deadline` has passed."""
        due, self.deadline = self.deadline, 0.0
        kind = self.deadline_kind
        if kind == WRITE:
            if self.transport.get_write_buffer_size() < self.write_backlog:
                self._arm_write_deadline()  # slow, but reading
            else:
                self.closed = True
                self.transport.abort()  # also after close(): what is left will never be taken
        elif kind == RESTING:
            # From when the rest was due, not from this sweep: the idle timeout is not late by a sweep.
            self.deadline_kind, self.deadline = IDLE, due + self.server.idle_timeout - REST_SECONDS
            if not self.queue and not self.in_head:  # (a request that waits for the client to read)
                self._rest()
        elif kind in (IDLE, LINGER):
            self.close()
        elif kind == HEADER:
            self._reject(408)
        elif kind == BODY:
            self._body_stalled()
        elif kind == RESPONSE and self.queue:
            upstream = self.queue[0].upstream
            if upstream is not None:
                upstream.cancel(504)
