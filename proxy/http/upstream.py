"""Upstream side of the data plane: keep-alive connection pools and response relaying.

Response bytes are read into a reused buffer and written to the client
transport unchanged once the head has been rewritten: chunked framing and
trailers pass through as they are, and the parser only watches the stream to
find where the response ends. This avoids a bytes object and a copy per read,
which is what makes large responses as cheap as nginx's. To a TLS client a read
is written a record at a time while the client takes it (tlswrites.py); what a
pause leaves of it is written when the client drains, before the next read.

Heads are parsed strictly. A target whose head lines end in a bare LF (busybox
httpd's CGI) fails that parse; its head is then parsed again by a lenient
parser and rewritten with CRLF before it is relayed (RFC 9112 2.2 lets a
recipient accept a bare LF; kamal-proxy, nginx and curl do). Only such a
target pays for it; requests from clients stay strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import re
from typing import TYPE_CHECKING, cast

import httptools

from proxy.http.headers import relay_response_head
from proxy.http.tlswrites import RECORD, write_records, writes_tls

if TYPE_CHECKING:
    from proxy.http.request import BodySender, Downstream, Request, TunnelClient

READ_BUFFER_SIZE = 256 * 1024
SPARE_READ_BUFFERS = 8  # kept by the process for the next connection that reads; the rest are unmapped
WRITE_HIGH_WATER = 256 * 1024
MAX_RESPONSE_HEAD = 64 * 1024
# Enough for the bursts of HTTP/2 clients (each connection may have 100 streams in flight): with
# fewer, the connections of a burst beyond this are closed and reopened on the next one.
MAX_IDLE_PER_TARGET = 256

# A head's end, and its line ends, where a line may end in a bare LF.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")


class UpstreamPool:
    """Keep-alive connections to one target, LIFO, plus what is in flight there.

    `busy` holds every connection serving a request (including ones still
    connecting): its size is the target's in-flight count, and draining waits
    for it to empty.
    """

    __slots__ = (
        "address",
        "address_bytes",
        "busy",
        "closed",
        "connect_timeout",
        "connecting",
        "connection_class",
        "drained",
        "host",
        "idle",
        "loop",
        "on_error",
        "port",
        "tunnels",
    )

    # A "pool" that answers requests itself (pythrust's cache and static files) needs no upstream head.
    answers_itself = False

    def __init__(
        self,
        host: str,
        port: int,
        connect_timeout: float = 10.0,
        connection_class: type[UpstreamConnection] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        # pythrust's connections rework responses (X-Sendfile, cache, compression); the proxy's relay them.
        self.connection_class = connection_class or UpstreamConnection
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.address_bytes = self.address.encode()
        self.connect_timeout = connect_timeout
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()
        self.tunnels: set[UpstreamConnection] = set()
        self.connecting: set[asyncio.Task[None]] = set()
        self.closed = False
        self.drained: asyncio.Future[None] | None = None
        self.on_error = _ignore_error

    @property
    def in_flight(self) -> int:
        return len(self.busy)

    def acquire(self, request: Request, client: Downstream) -> None:
        """Start `request` on an idle connection, or on a new one."""
        idle = self.idle
        while idle:
            upstream = idle.pop()
            if not upstream.closed:
                self.busy.add(upstream)
                upstream.start(request, client, reused=True)
                return
        upstream = self.connection_class(self)
        self.busy.add(upstream)
        upstream.request = request
        upstream.client = client
        request.upstream = upstream
        # The loop keeps only weak references to tasks: hold this one until it is done.
        task = self.loop.create_task(self._connect(upstream))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, upstream: UpstreamConnection) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(lambda: upstream, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            self.busy.discard(upstream)
            self._check_drained()
            self.on_error(self.address, exc)
            upstream.connect_failed()
            return
        upstream.connected()

    def release(self, upstream: UpstreamConnection, reusable: bool) -> None:
        """Take back a connection whose exchange ended."""
        self.busy.discard(upstream)
        if reusable and not self.closed and not upstream.closed and len(self.idle) < MAX_IDLE_PER_TARGET:
            self.idle.append(upstream)
        elif not upstream.closed:
            upstream.transport.close()
        if self.drained is not None:  # (only while draining: not a call per exchange)
            self._check_drained()

    def forget(self, upstream: UpstreamConnection) -> None:
        """A connection closed: it serves nothing any more."""
        self.busy.discard(upstream)
        self.tunnels.discard(upstream)
        if upstream in self.idle:
            self.idle.remove(upstream)
        self._check_drained()

    def _check_drained(self) -> None:
        drained = self.drained
        if drained is not None and not self.busy and not drained.done():
            drained.set_result(None)

    def close(self) -> None:
        """Stop pooling: idle connections close now, busy ones when their exchange ends."""
        self.closed = True
        while self.idle:
            self.idle.pop().transport.close()

    async def drain(self, timeout: float, keep_pooling: bool = False) -> int:
        """Let in-flight requests finish within `timeout`, then cut the rest.

        Returns how many requests had to be cut. Upgraded connections
        (WebSockets) are not waited for; they are closed once the requests
        are done, as the old target is about to go away. A target that stays
        (a paused service) can `keep_pooling`.
        """
        if not keep_pooling:
            self.close()
        if self.busy:
            self.drained = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.drained), timeout)
        cut = list(self.busy)
        for upstream in cut:
            upstream.cancel(504)
        for upstream in list(self.tunnels):
            upstream.transport.close()
        return len(cut)


def connection_tail(request: Request, client: Downstream) -> bytes:
    """The end of a response head: what it says of the connection, then the blank line."""
    if not request.keep_alive or client.closing:
        return b"Connection: close\r\n\r\n"
    if request.http10:
        return b"Connection: keep-alive\r\n\r\n"
    return b"\r\n"


_spare_read_buffers: list[tuple[mmap.mmap, memoryview]] = []


def _take_read_buffer() -> tuple[mmap.mmap, memoryview]:
    """A spare, or anonymous memory of READ_BUFFER_SIZE: only the pages a response fills become resident,
    and one let go is unmapped at once (a bytearray is zeroed, all of it resident, and malloc keeps it).
    Kept with its view: making one per exchange would cost more than the rest of this."""
    if _spare_read_buffers:
        return _spare_read_buffers.pop()
    buffer = mmap.mmap(-1, READ_BUFFER_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # not shmem: faster
    return buffer, memoryview(buffer)


def _ignore_error(address: str, exc: BaseException) -> None:
    """Default for `UpstreamPool.on_error` until the owner installs a logger."""


class UpstreamConnection(asyncio.BufferedProtocol):
    """One connection to a target, relaying one response at a time to a client."""

    __slots__ = (
        "attached",
        "body_sender",
        "client",
        "close_delimited",
        "closed",
        "got_any",
        "head_buffer",
        "head_end",
        "head_start",
        "held_loss",
        "in_head",
        "keep_alive",
        "lax_parser",
        "overrun",
        "parser",
        "paused",
        "pool",
        "read_buffer",
        "read_size",
        "read_view",
        "request",
        "response_done",
        "reused",
        "scan_buffer",
        "tls_client",
        "transport",
        "tunnel",
        "unsent",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.request: Request | None = None
        self.client: Downstream | None = None
        self.closed = False
        self.attached = False
        self.paused = False
        self.reused = False
        self.tunnel: TunnelClient | None = None
        self.body_sender: BodySender | None = None  # a buffered request body being sent (buffering.py)
        self.lax_parser: httptools.HttpResponseParser | None = None  # see _bare_lf_head
        self.read_buffer: mmap.mmap | None = None  # only while an exchange runs: see _take_read_buffer
        self.read_view: memoryview | None = None
        self.read_size = READ_BUFFER_SIZE  # the client's: see get_buffer
        self.tls_client = False  # the client's transport is TLS: body bytes go to it a record at a time
        self.unsent: memoryview | None = None  # what a client pause left of the last read
        self.held_loss: tuple[Exception | None] | None = None  # this connection ended while `unsent` waited
        self._reset()

    def _reset(self) -> None:
        self.in_head = True
        self.head_buffer = b""
        self.scan_buffer = b""
        self.head_start = 0
        self.head_end = 0
        self.response_done = False
        self.overrun = False
        self.keep_alive = True
        self.got_any = False
        self.close_delimited = False

    # -- starting an exchange -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def connected(self) -> None:
        client = self.client
        if client is None or client.closed:
            # Cancelled or abandoned while connecting.
            self.client = self.request = None
            self.closed = True
            self.transport.close()
            self.pool.forget(self)
            return
        self.start(self.request, client, reused=False)

    def connect_failed(self) -> None:
        client, request = self.client, self.request
        self.client = self.request = None
        self.closed = True
        if client is not None:
            client.upstream_failed(request, 502)

    def start(self, request: Request, client: Downstream, reused: bool) -> None:
        """Send the request head and whatever body arrived before the connection did."""
        self.request = request
        self.client = client
        self.reused = reused
        self.attached = True
        self.read_size = client.read_size
        self.tls_client = request.scheme == b"https" and writes_tls(client.transport)
        request.upstream = self
        body = request.body
        if body:
            request.body = None
            if body.__class__ is list:
                request.body_size = 0
                self.transport.writelines([request.head, *body])
                client.body_flushed()
            else:
                # A buffered body (buffering.RequestSpool) sends itself after the head, with back-pressure.
                self.transport.write(request.head)
                body.send(self)
        else:
            self.transport.write(request.head)
        if client.write_paused:
            self.pause()

    # -- flow control -----------------------------------------------------------

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()
            # A client that stops reading may hold this target for long: it keeps no read buffer meanwhile
            # (unless a head is being parsed from it: a 103 written to a full client pauses mid-head).
            if not self.in_head:
                self._let_go_of_read_buffer()

    def resume(self) -> None:
        if self.unsent is not None and not self._send_unsent():
            return
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        sender = self.body_sender
        if sender is not None:
            sender.pause()  # a buffered body: the client is not the one sending it
            return
        peer = self.tunnel or self.client
        if peer is not None:
            peer.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        sender = self.body_sender
        if sender is not None:
            sender.resume()
            return
        peer = self.tunnel or self.client
        if peer is not None:
            peer.resume_reading_for_upstream()

    # -- reading the response ---------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self.read_view
        if view is None:
            self.read_buffer, view = _take_read_buffer()
            self.read_view = view
        return view if self.read_size == READ_BUFFER_SIZE else view[: self.read_size]

    def buffer_updated(self, nbytes: int) -> None:
        data = self.read_view[:nbytes]
        tunnel = self.tunnel
        if tunnel is not None:
            out = tunnel.transport
            if self.tls_client:
                self._write_records(tunnel, data)
            else:
                out.write(data)
        else:
            client = self.client
            if client is None:
                # Bytes on a connection with no request: the target is broken.
                self.transport.abort()
                return
            out = client.transport
            self.got_any = True
            if self.in_head:
                self._head_data(data)
            else:
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserError:
                    self._fail_midway()
                    return
                if self.overrun:
                    self._fail_midway()
                    return
                if self.tls_client:
                    self._write_records(client, data)
                else:
                    out.write(data)
                self.request.response_bytes += nbytes
            if self.response_done and self.unsent is None:
                self._finish()  # which lets go of the read buffer
                return
        if out.get_write_buffer_size():
            # The transport still holds a view of our buffer: leave it that one.
            self.read_buffer = self.read_view = None

    def _let_go_of_read_buffer(self, client: Downstream | None = None) -> None:
        """Drop the read buffer: a spare again, unless a view of it may still be held (by the client's
        transport, or as `unsent`), which then keeps it until written."""
        view = self.read_view
        if view is None:
            return
        peer = client or self.tunnel or self.client
        held = self.unsent is not None or (peer is not None and peer.transport.get_write_buffer_size())
        if not held and len(_spare_read_buffers) < SPARE_READ_BUFFERS:
            _spare_read_buffers.append((self.read_buffer, view))
        self.read_buffer = self.read_view = None

    def _write_records(self, peer: Downstream | TunnelClient, data: memoryview) -> None:
        """Write body bytes to a TLS client a record at a time; keep what a pause leaves, stop reading."""
        sent = write_records(peer.transport, data, peer)
        if sent < len(data):
            self.unsent = data[sent:]
            self.pause()

    def _send_unsent(self) -> bool:
        """The client drained: write what its pause left, then end what waited for it; whether all went."""
        peer = self.tunnel or self.client
        if peer is None:
            self.unsent = None
            return True
        data = self.unsent
        sent = write_records(peer.transport, data, peer)
        if sent < len(data):
            self.unsent = data[sent:]
            return False
        self.unsent = None
        held_loss, self.held_loss = self.held_loss, None
        if self.response_done and self.client is not None:
            self._finish()
        elif held_loss is not None:
            self._lost(held_loss[0])
        else:
            return True
        return False

    def _head_data(self, data: memoryview) -> None:
        buffered = self.head_buffer
        self.scan_buffer = buffered + data if buffered else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(exc.args[0])
            return
        except httptools.HttpParserError:
            if not self._bare_lf_head():
                self._fail_head(502)
            return
        if self.overrun:
            self._fail_head(502)
            return
        if self.in_head:
            if len(self.scan_buffer) > MAX_RESPONSE_HEAD:
                self._fail_head(502)
                return
            self.head_buffer = bytes(self.scan_buffer[self.head_end :])
            self.head_end = 0
            return
        request = self.request
        request.response_started = True
        self.client.deadline = 0.0
        self._send_head()
        if request.is_head:
            # The head said how long a body would be; there is none. (After the head is sent: it reads
            # the status from this parser.)
            self.response_done = True
            self.parser = httptools.HttpResponseParser(self)
        self.head_buffer = b""
        self.scan_buffer = b""

    def _bare_lf_head(self) -> bool:
        """After a failed head parse: if the head has lines ending in a bare LF, parse it again (and the
        heads after it on this connection) with a parser that takes them; whether it did."""
        pending = bytes(self.scan_buffer[self.head_end :])
        if self.parser is self.lax_parser or b"\n" not in pending.replace(b"\r\n", b""):
            return False
        parser = httptools.HttpResponseParser(_BareLfHeads(self))
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.parser = self.lax_parser = parser
        self.head_buffer = b""
        self.head_end = 0
        self._head_data(pending)
        return True

    def _send_head(self) -> None:
        """Write the rewritten head to the client, with the body bytes that came in the same read."""
        head = self._response_head()
        request = self.request
        rest = len(self.scan_buffer) - self.head_end
        out = self.client.transport
        if rest <= 0 or request.is_head:
            out.write(head)
        elif self.tls_client and rest <= RECORD:  # the usual answer: head and body in one write
            out.write(head + self.scan_buffer[self.head_end :])
        elif self.tls_client:
            out.write(head)
            self._write_records(self.client, self.scan_buffer[self.head_end :])
        elif rest <= 65536:
            out.write(head + self.scan_buffer[self.head_end :])
        else:
            out.writelines((head, self.scan_buffer[self.head_end :]))
        request.response_bytes += max(rest, 0)

    def _upgraded(self, offset: int) -> None:
        """The target answered 101: from now on both sides are a byte tunnel."""
        client, request = cast("TunnelClient", self.client), self.request  # only HTTP/1.1 sets `upgrade`
        if not request.upgrade or self.parser.get_status_code() != 101:
            self._fail_head(502)
            return
        head = self._response_head()
        request.response_started = True
        rest = self.scan_buffer[self.head_end :] if len(self.scan_buffer) > self.head_end else b""
        client.transport.write(head + bytes(rest))
        self.pool.busy.discard(self)
        self.pool.tunnels.add(self)
        self.pool._check_drained()
        self.client = self.request = None
        self.response_done = False
        self.tunnel = client
        client.tunnel_opened(request, self)

    # -- httptools callbacks ------------------------------------------------------

    def on_headers_complete(self) -> None:
        # The head is taken from the raw bytes rather than rebuilt from per-header
        # callbacks: a few C-level searches instead of a Python call per header.
        scan = self.scan_buffer
        start = self.head_end
        if isinstance(scan, memoryview):
            # A view of the start of read_buffer: search the buffer itself, without a copy.
            end = self.read_buffer.find(b"\r\n\r\n", start, len(scan)) + 4
        else:
            end = scan.find(b"\r\n\r\n", start) + 4
        self.head_start, self.head_end = start, end
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim response (100 Continue, 103 Early Hints): relay as is, keep reading.
            self.client.transport.write(bytes(scan[start:end]))
            return
        self.in_head = False
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_begin(self) -> None:
        if self.response_done:
            # Bytes after the end of the response: the target is out of step with
            # us, and relaying them would let it split the client's stream.
            self.overrun = True

    def on_message_complete(self) -> None:
        if not self.in_head:
            self.response_done = True

    def _response_head(self) -> bytes:
        request = self.request
        status = self.parser.get_status_code()
        request.status = status
        head, framed = relay_response_head(bytes(self.scan_buffer[self.head_start : self.head_end - 2]))
        if request.head_filter is not None:
            head = request.head_filter(request, head)
        if not framed and not request.is_head and status >= 200 and status not in (204, 304):
            self.close_delimited = True
            request.keep_alive = False
        if status == 101:
            return head + b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % request.upgrade
        return head + connection_tail(request, self.client)

    # -- ending the exchange ------------------------------------------------------

    def _finish(self) -> None:
        """The response has ended: detach from the client, give the connection back to the pool."""
        client, request = self.client, self.request
        reusable = (
            self.keep_alive
            and request.complete
            and not self.close_delimited
            and request.upgrade is None
            and not self.transport.get_write_buffer_size()
        )
        self.client = self.request = None
        self.attached = False
        self._reset()
        # Between exchanges a connection holds no read buffer (a pool of idle connections would keep
        # 256 KiB each).
        self._let_go_of_read_buffer(client)
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.pool.release(self, reusable)
        # This connection may have paused the client's reading (request body
        # backlog); it no longer writes for this client.
        client.resume_reading_for_upstream()
        self._complete(client, request)

    def _complete(self, client: Downstream, request: Request) -> None:
        """The target's response has ended: so has the client's (pythrust's connections may first have
        more to send)."""
        client.response_finished(request)

    def _fail_head(self, status: int) -> None:
        client, request = self.client, self.request
        self.client = self.request = None
        self.response_done = False  # the rest of the read must not finish what has failed
        self.transport.abort()
        client.upstream_failed(request, status)

    def _fail_midway(self) -> None:
        client = self.client
        self.client = self.request = None
        self.unsent = None
        self.response_done = False
        self.transport.abort()
        client.abort()

    def cancel(self, status: int) -> None:
        """Give up on this exchange (target timeout, drain deadline)."""
        client, request = self.client, self.request
        self.client = self.request = None
        self.unsent = self.held_loss = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.pool.forget(self)
        if client is not None:
            if request.response_started:
                client.abort()
            else:
                client.upstream_failed(request, status)

    def client_gone(self) -> None:
        """The client disconnected mid-exchange: this connection's state is unknown."""
        self.client = self.request = None
        self.unsent = self.held_loss = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.pool.forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.body_sender is not None:
            self.body_sender.stop()
        if self.unsent is not None:
            self.held_loss = (exc,)  # the client has yet to get the end of what was read: after it
            return
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        """What this connection's end means for the client it was relaying to."""
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel_closed()
            return
        client, request = self.client, self.request
        if client is None:
            return
        self.client = self.request = None
        if self.close_delimited and not self.in_head and exc is None:
            request.keep_alive = False
            self._complete(client, request)
        elif self.close_delimited and not self.in_head:
            client.abort()  # reset midway: the client must not take a cut body for the whole one
        elif (
            not self.got_any
            and self.reused
            and not request.retried
            and not request.had_body
            and not request.chunked
        ):
            # A pooled connection the target had closed: try once more on a fresh one.
            request.retried = True
            request.upstream = None
            self.pool.acquire(request, client)
        elif request.response_started:
            client.abort()
        else:
            client.upstream_failed(request, 502)


class _BareLfHeads:
    """Parser callbacks for a target whose head lines end in a bare LF: each head is rewritten with
    CRLF line ends in the connection's scan buffer, then the connection's own callback reads it, so
    everything after (relaying, HTTP/2, pythrust) sees a normal head."""

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.on_message_begin = connection.on_message_begin
        self.on_message_complete = connection.on_message_complete
        on_body = getattr(connection, "on_body", None)  # pythrust's connections decode some bodies
        if on_body is not None:
            self.on_body = on_body

    def on_headers_complete(self) -> None:
        connection = self.connection
        scan = bytes(connection.scan_buffer)
        start = connection.head_end
        end = _BLANK_LINE.search(scan, start).end()
        head = _LINE_END.sub(b"\r\n", scan[start:end])
        connection.scan_buffer = scan[:start] + head + scan[end:]
        connection.on_headers_complete()
