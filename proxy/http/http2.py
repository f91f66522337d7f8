"""HTTP/2 client connections (TLS with ALPN `h2`), each stream forwarded as an HTTP/1.1 request.

A stream becomes a `Request` that goes through the same routing, upstream
pools and forwarding rules as on HTTP/1.1; targets never see HTTP/2. The
target's HTTP/1.1 response is read again by a per-stream parser and sent on
as HEADERS and DATA frames within the client's flow-control windows. When a
client does not open its window, the stream pauses its target connection
instead of buffering the response; request bodies are acknowledged (window
updates) only once the target connection has taken them.

The `h2` library keeps the protocol state and checks every frame against
RFC 9113; its connection errors become a GOAWAY and a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hpack.exceptions
import httptools
import hyperframe.exceptions
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

from proxy.http import headers as h
from proxy.http.buffering import (
    RequestSpool,
    begin_buffered,
    end_exchange,
    spool_body,
    take_expect_continue,
)
from proxy.http.forwarding import Reject, RequestForwarding
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

# The client preface is 24 bytes of magic, then a SETTINGS frame (type 4) whose type byte is at 24 + 3.
_PREFACE_SETTINGS_TYPE_AT = 27
_SETTINGS_TYPE = 4
# Length (8: no debug data) and type (7) of the GOAWAY frames h2 writes.
_GOAWAY_HEAD = b"\x00\x00\x08\x07"

# A field name (lower-case token, pseudo-headers with their colon) and what no value may hold: a CR or
# LF would start a header line of its own in the HTTP/1.1 request to the target.
_FIELD_NAME = re.compile(rb":?[!#$%&'*+\-.^_`|~0-9a-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")

# Bytes a :path may not contain (the request line to the target is space-separated), and
# the characters of a method token (RFC 9110 5.6.2).
_PATH_FORBIDDEN = bytes(range(0x21)) + b"\x7f"
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Target response headers that are HTTP/1.1 framing or connection-specific (RFC 9113 8.2.2).
_RESPONSE_DROP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)


class _SettingValues(list):
    """One setting's values, the current one first and any not yet acknowledged after it: what h2
    keeps in a deque, which costs 760 B even for one value (h2 keeps 16 of them per connection)."""

    __slots__ = ()

    def popleft(self) -> int:
        return self.pop(0)


class _CompactSettings(h2.settings.Settings):
    """h2's settings with each setting's values in a small list (an idle connection's two settings
    objects hold about 1.5 KB instead of 12 KB). It reaches into h2's private `_settings` (h2 4.x)."""

    def __init__(
        self, client: bool, initial_values: dict[h2.settings.SettingCodes, int] | None = None
    ) -> None:
        super().__init__(client=client, initial_values=initial_values)
        self._settings = {key: _SettingValues(values) for key, values in self._settings.items()}

    def __setitem__(self, key: h2.settings.SettingCodes | int, value: int) -> None:
        super().__setitem__(key, value)  # a setting it did not hold yet gets a deque: replaced
        values = self._settings[key]
        if values.__class__ is not _SettingValues:
            self._settings[key] = _SettingValues(values)


class _EagerFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, checking a frame's declared length as soon as its 9-byte header is in, not once
    the whole frame is: a client that declares a 16 MiB frame gets GOAWAY FRAME_SIZE_ERROR before more
    than one read of its payload is held (h2 would keep all of it). Reaches into h2's private `_data`."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9:
            self._validate_frame_length(int.from_bytes(data[:3], "big"))
        return super().__next__()


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, answering a malformed request head with the stream error RFC 9113 8.1.1
    names (RST_STREAM PROTOCOL_ERROR) instead of ending the connection and every stream on it.

    It wraps a private h2 method (hence the pin to h2 4.x): the header block has been decoded
    (HPACK state stays in step) and the stream opened before the fields are checked, so such an
    error leaves a new stream behind, which is reset.
    """

    def __init__(self, config: h2.config.H2Configuration, local: dict[h2.settings.SettingCodes, int]) -> None:
        super().__init__(config)
        eager = _EagerFrameBuffer(server=True)
        eager.max_frame_size = self.incoming_buffer.max_frame_size
        self.incoming_buffer = eager
        self.local_settings = _CompactSettings(client=False, initial_values=local)
        self.remote_settings = _CompactSettings(client=True)

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        new = frame.stream_id not in self.streams
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.ProtocolError as exc:
            # Subclasses (too many streams, oversized header list, closed stream) are connection errors.
            if not new or frame.stream_id not in self.streams or type(exc) is not h2.exceptions.ProtocolError:
                raise
            self.reset_stream(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
            return [], []


class Http2Connection(RequestForwarding, asyncio.Protocol):
    """One HTTP/2 client connection: frames in and out, and its streams."""

    __slots__ = (
        "client_ip",
        "closed",
        "closing",
        "conn",
        "flush_scheduled",
        "forwarded_plain",
        "idle_deadline",
        "last_host",
        "last_host_line",
        "log_fields",
        "port",
        "preface_left",
        "preface_seen",
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
        self.unsent: memoryview | None = None  # what a pause left of the frames last taken from h2
        self.write_deadline = 0.0
        self.write_mark = 0
        self.written = 0
        self.flush_scheduled = False
        self.last_host = None
        self.last_host_line = b""
        self.idle_deadline = 0.0
        self.reset_count = 0
        self.reset_period_end = 0.0
        self.preface_left = True
        self.preface_seen = b""
        # Outbound headers are the target's, already lower-cased and filtered by Http2Stream:
        # h2's second pass over them would only cost time.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = _ServerConnection(
            config,
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: server.max_head_bytes,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.conn.decoder.max_header_list_size = server.max_head_bytes

    # -- connection events --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(
            high=TLS_WRITE_HIGH_WATER if self.scheme == b"https" else WRITE_HIGH_WATER
        )
        self._identify_client(transport, self.port)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - self.conn.inbound_flow_control_window)
        self.flush()
        self.server.connections.add(self)
        # Until the first request, the connection is held to the time limit for a request head.
        self.idle_deadline = self.server.loop.time() + self.server.header_timeout

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.preface_left:
            data = self._check_preface(data)
            if data is None:
                return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return
        for event in events:
            if self.closed:
                break  # failed midway (e.g. a reset flood): the rest of the batch starts nothing
            handler = _HANDLERS.get(event.__class__)
            if handler is not None:
                handler(self, event)
        if not self.closed:
            self.flush()

    def _check_preface(self, data: bytes) -> bytes | None:
        """RFC 9113 3.4: the client's first frame after the magic must be SETTINGS (h2 does not check)."""
        seen = self.preface_seen + data
        if len(seen) < _PREFACE_SETTINGS_TYPE_AT + 1:
            self.preface_seen = seen
            return data
        self.preface_left = False
        self.preface_seen = b""
        if seen[_PREFACE_SETTINGS_TYPE_AT] != _SETTINGS_TYPE:
            self.fail(ErrorCodes.PROTOCOL_ERROR)
            return None
        return data

    def _protocol_error(self, exc: h2.exceptions.ProtocolError) -> None:
        """Send the GOAWAY h2 queued for the client's error, with the code RFC 9113 names, and close.

        h2 reports an undecodable header block (4.3) and a SETTINGS ack with a
        payload (6.5) as PROTOCOL_ERROR, and sends no GOAWAY for a bad preface.
        """
        self.closed = True
        data = self.conn.data_to_send()
        if data[-17:-13] == _GOAWAY_HEAD:  # the GOAWAY (no debug data) is the last frame queued
            cause = exc.__cause__
            if isinstance(cause, hpack.exceptions.HPACKError):
                data = data[:-4] + ErrorCodes.COMPRESSION_ERROR.to_bytes(4, "big")
            elif isinstance(cause, hyperframe.exceptions.InvalidDataError) and "ack" in str(cause).lower():
                data = data[:-4] + ErrorCodes.FRAME_SIZE_ERROR.to_bytes(4, "big")
        else:
            data += GoAwayFrame(0, error_code=ErrorCodes.PROTOCOL_ERROR).serialize()
        self._write_all(data)
        self.transport.close()
        self._drop_streams()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        self._drop_streams()

    def _drop_streams(self) -> None:
        """The connection is over (h2 sends nothing more): stop every exchange still going."""
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
        """Write the frames h2 has queued; while the client's socket is full, h2 keeps them."""
        self.flush_scheduled = False
        if self.write_paused and self.scheme == b"https":  # h2c: the transport buffers, as before
            return
        data = self.conn.data_to_send()
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

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.closed:
            return
        if self.closing:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        request = Request(time.time(), self.scheme)
        stream = Http2Stream(self, stream_id, request)
        self.streams[stream_id] = stream
        self.idle_deadline = 0.0
        request.complete = event.stream_ended is not None
        try:
            self._read_head(request, event.headers)
        except Reject as reject:
            stream.respond_error(reject.status)
            return
        stream.start()

    def _read_head(self, request: Request, headers: list[tuple[bytes, bytes]]) -> None:
        """Fill `request` from a header list h2 has already checked (RFC 9113 8.2, 8.3)."""
        authority = host = b""
        cookies = []
        special = h.REQUEST_SPECIAL
        lengths = h.REQUEST_SPECIAL_LENGTHS
        lines = request.headers
        for name, value in headers:
            if name[0] == 58:  # b":"
                if name == b":method":
                    request.method = value
                elif name == b":path":
                    request.url = value
                elif name == b":authority":
                    authority = value
            elif name == b"cookie":
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
        # h2 4.3+ checks these too; the target's HTTP/1.1 head must never depend on that.
        if not all(map(_FIELD_NAME.fullmatch, (name for name, _ in headers))) or _FORBIDDEN_IN_VALUE.search(
            b"".join(value for _, value in headers)
        ):
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

    def _data_received(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            # A stream already answered: its window must still be given back.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.body_received(event.data, event.flow_controlled_length)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_ended()

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.client_gone(499)
        now = self.server.loop.time()
        if now > self.reset_period_end:
            self.reset_period_end = now + RESET_PERIOD
            self.reset_count = 0
        self.reset_count += 1
        if self.reset_count > MAX_RESETS:
            self.fail(ErrorCodes.ENHANCE_YOUR_CALM)

    def _window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.send_pending()
        else:
            self._send_all_pending()

    def _settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._send_all_pending()

    def _client_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # h2 sends nothing more after a GOAWAY from the client: streams in flight end with the connection,
        # after what was already framed for it (never a frame cut in half).
        self.closed = True
        self._write_all(self.conn.data_to_send())
        self.transport.close()
        self._drop_streams()

    def _send_all_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending:
                stream.send_pending()

    # -- frames to the client -----------------------------------------------------

    def send_within_window(self, stream_id: int, data: bytes) -> int:
        """Send as much of `data` as the client's windows allow; return how much that was."""
        conn = self.conn
        window = conn.local_flow_control_window(stream_id)
        frame_size = conn.max_outbound_frame_size
        sent = 0
        while sent < len(data) and window > 0:
            size = min(window, frame_size, len(data) - sent)
            conn.send_data(stream_id, data[sent : sent + size])
            sent += size
            window -= size
        return sent

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
        self.flush()
        # Written directly so that h2 still lets the streams in flight finish.
        goaway = GoAwayFrame(0, last_stream_id=self.conn.highest_inbound_stream_id, error_code=0)
        self._write_all(goaway.serialize())
        if not self.streams:
            self.close()

    def close(self) -> None:
        """A GOAWAY without error, then close once buffered frames are sent."""
        if self.closed:
            return
        self.fail(ErrorCodes.NO_ERROR)

    def fail(self, error_code: ErrorCodes) -> None:
        """GOAWAY with `error_code` (the client's misbehaviour, or none), then close."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(error_code, last_stream_id=self.conn.highest_inbound_stream_id)
        self.flush_scheduled = False
        if not self.transport.is_closing():
            self._write_all(self.conn.data_to_send())
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
            self._send_headers([(b":status", b"100")])
            self.connection.flush_soon()
        self.deadline = server.loop.time() + server.header_timeout

    def start_again(self, request: Request) -> None:
        """Route the request anew and go on with it: a pool that held it (a paused service) lets it go."""
        if not self.closed:
            self.start()

    def body_received(self, data: bytes, flow_length: int) -> None:
        request = self.request
        if self.deadline and not request.response_started:
            server = self.connection.server
            self.deadline = server.loop.time() + server.header_timeout
        if self.ending or not data:
            # Answered already, or an empty DATA frame (often the one carrying END_STREAM): as a
            # chunk it would read "0\r\n\r\n", the end of the body, and the real end would follow it.
            self.connection.conn.acknowledge_received_data(flow_length, self.stream_id)
            return
        request.had_body = True
        limit = self.connection.server.max_body_bytes
        if limit:
            request.body_received += len(data)
            if request.body_received > limit:
                self.connection.conn.acknowledge_received_data(flow_length, self.stream_id)
                self.too_large()
                return
        upstream = request.upstream
        if upstream is not None and upstream.attached and upstream.request is request:
            upstream.transport.write(b"%x\r\n%s\r\n" % (len(data), data) if request.chunked else data)
            if self.upload_paused:
                self.acked_later += flow_length
            else:
                self.connection.conn.acknowledge_received_data(flow_length, self.stream_id)
            return
        spool = request.body
        if spool.__class__ is RequestSpool:
            if spool.write(data):
                self.connection.conn.acknowledge_received_data(flow_length, self.stream_id)
                self.too_large()  # over the service's limit: the target never sees it
            elif self.upload_paused:
                self.acked_later += flow_length  # the disk is behind: given back once it catches up
            else:
                self.connection.conn.acknowledge_received_data(flow_length, self.stream_id)
            return
        if request.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        # The target connection is not ready: hold the bytes, and their window, until it is.
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
        """Acknowledge held request-body bytes; also when the stream has ended, as h2 then still
        credits the connection's window, which all streams share."""
        if self.acked_later and not self.connection.closed:
            self.connection.conn.acknowledge_received_data(self.acked_later, self.stream_id)
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
        self._reset(ErrorCodes.INTERNAL_ERROR)

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
        headers = [(b":status", b"%d" % status), *self.response_headers]
        self.response_headers = []
        if status < 200:
            if status == 101:
                self.abort()  # no protocol switch on an HTTP/2 stream
                return
            self._send_headers(headers)  # 100 Continue, 103 Early Hints
            return
        self.headers_sent = True
        self._send_headers(headers)

    def _send_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.closed:
            return
        try:
            self.connection.conn.send_headers(self.stream_id, headers)
        except h2.exceptions.ProtocolError:
            self.abort()  # a header HTTP/2 cannot carry

    def on_body(self, body: bytes) -> None:
        if self.closed:
            return
        if self.pending or self.connection.write_paused:
            self.pending.append(body)
            self.pending_bytes += len(body)
            self.update_target_flow()
            return
        sent = self.connection.send_within_window(self.stream_id, body)
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
            sent = self.connection.send_within_window(self.stream_id, chunk)
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
        conn = self.connection.conn
        try:
            if self.headers_sent:
                conn.end_stream(self.stream_id)
            else:
                conn.reset_stream(self.stream_id, ErrorCodes.INTERNAL_ERROR)
            if not self.request.complete:
                # Answered before the client finished sending: ask it to stop (RFC 9113 8.1).
                conn.reset_stream(self.stream_id, ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass  # the client reset it meanwhile, or the connection ended
        self._give_back_window()
        self.connection.flush_soon()
        self.connection.stream_done(self)

    def _reset(self, error_code: ErrorCodes) -> None:
        self.closed = True
        self.ending = True
        self._stop_exchange()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.conn.reset_stream(self.stream_id, error_code)
        self._give_back_window()
        self.connection.flush_soon()
        self.connection.stream_done(self)


_HANDLERS = {
    h2.events.RequestReceived: Http2Connection._request_received,
    h2.events.DataReceived: Http2Connection._data_received,
    h2.events.StreamEnded: Http2Connection._stream_ended,
    h2.events.StreamReset: Http2Connection._stream_reset,
    h2.events.WindowUpdated: Http2Connection._window_updated,
    h2.events.RemoteSettingsChanged: Http2Connection._settings_changed,
    h2.events.ConnectionTerminated: Http2Connection._client_goaway,
}
