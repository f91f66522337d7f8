"""HTTP/2's server side on the wire (RFC 9113): frames, stream states, flow control, SETTINGS, HPACK.

Ours rather than the `h2` library's: h2 builds an event object per frame and runs each through a
state machine, which cost about half of the CPU of an HTTP/2 request through pyproxy. Here each frame
is read in place from the bytes a read brought (a DATA payload is handed on as a memoryview, no copy),
a stream's state is a few integers, and what a frame means is told straight to the connection
(`FrameHandler`, http2.py). What is sent is queued and taken whole (`take`), so a response's HEADERS
and DATA leave in one write. HPACK is hpackcodec.py's.

Every error the RFC names is raised as `Http2ConnectionError` (the connection then sends GOAWAY with its
code and closes) or answered here with RST_STREAM; h2spec's 146 cases check them.
"""

from __future__ import annotations

import struct
from typing import Protocol

from proxy.http.hpackcodec import HeaderDecoder, HeaderListTooLarge, HpackError, encode_response_head

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings (RFC 9113 6.5.2).
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME_SIZE = 16_384  # what we accept: we never announce more
MAX_FRAME_SIZE_LIMIT = 2**24 - 1

# Streams we reset, remembered so that what the client had already sent on them is ignored; ranges of
# stream ids the client skipped, remembered to tell a frame on a stream never opened from a closed one.
REMEMBERED_RESETS = 128
REMEMBERED_SKIPS = 16
MAX_CONTINUATIONS = 64  # CONTINUATION frames per header block (a few carry any real head)

_HEAD = struct.Struct(">BHBBL")  # length (high byte, low 16 bits), type, flags, stream id
_SETTING = struct.Struct(">HL")

# Fields a request may not carry (RFC 9113 8.2.2), and the characters of a field name (lower-case token).
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_NAME_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"


class Http2ConnectionError(Exception):
    """A connection error (RFC 9113 5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FrameHandler(Protocol):
    """What the frames of a connection mean to whoever serves its streams (http2.Http2Connection)."""

    closed: bool

    def on_request(
        self, stream_id: int, method: bytes, path: bytes, authority: bytes, fields: list, ended: bool
    ) -> None: ...
    def on_data(self, stream_id: int, data: memoryview, flow_length: int) -> None: ...
    def on_stream_end(self, stream_id: int) -> None: ...
    def on_reset(self, stream_id: int) -> None: ...
    def on_stream_error(self, stream_id: int) -> None: ...
    def on_window(self, stream_id: int) -> None: ...
    def on_goaway(self, error_code: int) -> None: ...


class _Stream:
    """An open stream's state: its two windows, which sides are still open, and its body's length."""

    __slots__ = ("expected", "local_open", "received", "recv_window", "remote_open", "send_window", "unacked")

    def __init__(self, send_window: int, recv_window: int, expected: int, remote_open: bool) -> None:
        self.send_window = send_window  # what we may send before the client opens its window
        self.recv_window = recv_window  # what the client may send before we give window back
        self.unacked = 0  # received and taken, not yet given back
        self.remote_open = remote_open
        self.local_open = True
        self.expected = expected  # content-length, or -1
        self.received = 0


class _HeaderBlock:
    """A header block whose CONTINUATION frames are still to come."""

    __slots__ = ("continuations", "flags", "fragments", "self_dependent", "stream_id")

    def __init__(self, stream_id: int, flags: int, fragment: bytes, self_dependent: bool) -> None:
        self.stream_id = stream_id
        self.flags = flags
        self.fragments = bytearray(fragment)
        self.self_dependent = self_dependent
        self.continuations = 0


class FrameLayer:
    """One server connection's frames: `receive` what the client sends, queue what we send, `take` it."""

    __slots__ = (
        "awaiting_settings",
        "block",
        "block_limit",
        "connection_window",
        "decoder",
        "handler",
        "highest",
        "initial_send_window",
        "max_send_frame",
        "max_streams",
        "out",
        "preface_left",
        "recv_unacked",
        "recv_window",
        "resets",
        "rest",
        "send_window",
        "settings",
        "skipped",
        "stream_window",
        "streams",
        "tail",
    )

    def __init__(
        self,
        handler: FrameHandler,
        *,
        max_streams: int,
        max_header_list: int,
        stream_window: int,
        connection_window: int,
    ) -> None:
        self.handler = handler
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.settings = (
            (SETTINGS_MAX_CONCURRENT_STREAMS, max_streams),
            (SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list),
            (SETTINGS_INITIAL_WINDOW_SIZE, stream_window),
            (SETTINGS_ENABLE_PUSH, 0),
        )
        self.decoder = HeaderDecoder(max_header_list)
        # A compressed block bigger than the decoded list may be is refused before it is decoded.
        self.block_limit = max_header_list + DEFAULT_FRAME_SIZE
        self.out: list[bytes | memoryview] = []
        self.tail = -1  # where in `out` the last frame's head is, when END_STREAM may still be set on it
        self.rest = b""
        self.preface_left = PREFACE
        self.awaiting_settings = True  # the client's first frame must be SETTINGS (3.4)
        self.block: _HeaderBlock | None = None
        self.streams: dict[int, _Stream] = {}
        self.resets: dict[int, None] = {}  # streams we reset, oldest first
        self.skipped: list[tuple[int, int]] = []  # (lowest, highest) ids the client passed over
        self.highest = 0
        self.send_window = DEFAULT_WINDOW
        self.recv_window = connection_window
        self.recv_unacked = 0
        self.initial_send_window = DEFAULT_WINDOW
        self.max_send_frame = DEFAULT_FRAME_SIZE

    # -- what we send --------------------------------------------------------------

    def start(self) -> None:
        """Our SETTINGS, and the connection's window raised from the default."""
        payload = b"".join(_SETTING.pack(ident, value) for ident, value in self.settings)
        self._queue(SETTINGS, 0, 0, payload)
        self._queue(WINDOW_UPDATE, 0, 0, (self.connection_window - DEFAULT_WINDOW).to_bytes(4, "big"))

    def take(self) -> bytes:
        """Everything queued, as one buffer to write; b"" if nothing is."""
        out = self.out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self.tail = -1
        return data

    def send_headers(self, stream_id: int, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        """A response head, in HEADERS and as many CONTINUATION frames as it needs."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return
        block = encode_response_head(status, fields)
        frame_size = self.max_send_frame
        if len(block) <= frame_size:
            self._queue(HEADERS, END_HEADERS, stream_id, block)
            return
        self._queue(HEADERS, 0, stream_id, block[:frame_size])
        for at in range(frame_size, len(block), frame_size):
            last = at + frame_size >= len(block)
            self._queue(CONTINUATION, END_HEADERS if last else 0, stream_id, block[at : at + frame_size])

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Send as much of `data` as the windows allow and return how much; a closed stream takes all."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return len(data)
        size = min(len(data), stream.send_window, self.send_window)
        if size <= 0:
            return 0
        frame_size = self.max_send_frame
        out = self.out
        if size <= frame_size:
            self.tail = len(out)
            out.append(_HEAD.pack(size >> 16, size & 0xFFFF, DATA, 0, stream_id))
            out.append(data if size == len(data) else data[:size])
        else:
            for at in range(0, size, frame_size):
                chunk = data[at : min(at + frame_size, size)]
                self.tail = len(out)
                out.append(_HEAD.pack(len(chunk) >> 16, len(chunk) & 0xFFFF, DATA, 0, stream_id))
                out.append(chunk)
        stream.send_window -= size
        self.send_window -= size
        return size

    def end_stream(self, stream_id: int) -> None:
        """Our side of the stream is done: END_STREAM, set on the stream's frame last queued if that is
        the last frame queued (a response's HEADERS and DATA then end in one frame), else an empty DATA."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return
        stream.local_open = False
        out = self.out
        tail = self.tail
        if tail >= 0 and out[tail][5:9] == stream_id.to_bytes(4, "big"):
            head = out[tail]
            out[tail] = head[:4] + bytes((head[4] | END_STREAM,)) + head[5:]
        else:
            self._queue(DATA, END_STREAM, stream_id, b"")
        if not stream.remote_open:
            self._forget(stream_id, False)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM with `code` for a stream still open; what the client sends on it after is ignored."""
        if stream_id in self.streams:
            self._queue(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))
            self._forget(stream_id, True)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """`size` bytes of the stream's DATA were taken: give their window back, in WINDOW_UPDATEs of at
        least half a window (the client never waits on less, and a small body costs no frame)."""
        unacked = self.recv_unacked + size
        if unacked >= self.connection_window // 2:
            self.recv_window += unacked
            self._queue(WINDOW_UPDATE, 0, 0, unacked.to_bytes(4, "big"))
            unacked = 0
        self.recv_unacked = unacked
        stream = self.streams.get(stream_id)
        if stream is not None and stream.remote_open:
            stream.unacked += size
            if stream.unacked >= self.stream_window // 2:
                stream.recv_window += stream.unacked
                self._queue(WINDOW_UPDATE, 0, stream_id, stream.unacked.to_bytes(4, "big"))
                stream.unacked = 0

    def goaway(self, code: int) -> None:
        """GOAWAY naming the last stream the client opened: the streams up to it may still finish."""
        self._queue(GOAWAY, 0, 0, self.highest.to_bytes(4, "big") + code.to_bytes(4, "big"))

    def _queue(self, kind: int, flags: int, stream_id: int, payload: bytes | memoryview) -> None:
        size = len(payload)
        out = self.out
        self.tail = len(out) if kind == DATA or (kind == HEADERS and flags & END_HEADERS) else -1
        out.append(_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id))
        if size:
            out.append(payload)

    def _forget(self, stream_id: int, reset_by_us: bool) -> None:
        """The stream is closed (a callback may have closed it already)."""
        if self.streams.pop(stream_id, None) is not None and reset_by_us:
            self._remember_reset(stream_id)

    def _remember_reset(self, stream_id: int) -> None:
        resets = self.resets
        resets[stream_id] = None
        if len(resets) > REMEMBERED_RESETS:
            del resets[next(iter(resets))]

    def _idle(self, stream_id: int) -> bool:
        """Never opened by the client (even ids are the server's, which pushes nothing)."""
        return stream_id > self.highest or not stream_id & 1

    def _passed_over(self, stream_id: int) -> bool:
        """Below the highest stream id yet never opened: the client skipped it."""
        return any(low <= stream_id <= high for low, high in self.skipped)

    def _stream_error(self, stream_id: int, code: int) -> None:
        """RST_STREAM for the client's error on a stream; an exchange going on for it is told."""
        if stream_id in self.streams:
            self.reset_stream(stream_id, code)
            self.handler.on_stream_error(stream_id)
        else:
            self._queue(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))

    # -- what the client sends -----------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Act on every whole frame in what arrived (after what the last read left of a frame)."""
        if self.rest:
            data = self.rest + data
            self.rest = b""
        if self.preface_left:
            data = self._preface(data)
        pos = 0
        end = len(data)
        if self.awaiting_settings and end >= 9:
            if data[3] != SETTINGS or data[4] & ACK:
                raise Http2ConnectionError(PROTOCOL_ERROR)
            self.awaiting_settings = False
        view = memoryview(data)
        unpack = _HEAD.unpack_from
        handler = self.handler
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = high << 16 | low
            if length > DEFAULT_FRAME_SIZE:  # told at its 9-byte header: its payload is never held
                raise Http2ConnectionError(FRAME_SIZE_ERROR)
            start = pos + 9
            stop = start + length
            if stop > end:
                break
            pos = stop
            if self.block is not None and kind != CONTINUATION:
                raise Http2ConnectionError(PROTOCOL_ERROR)  # a header block must not be interleaved (6.2)
            if kind < 10:
                _RECEIVERS[kind](self, data, view, start, stop, flags, stream_id & 0x7FFFFFFF)
                if handler.closed:
                    return
        if pos < end:
            self.rest = data[pos:]

    def _preface(self, data: bytes) -> bytes:
        expected = self.preface_left
        seen = data[: len(expected)]
        if not expected.startswith(seen):
            raise Http2ConnectionError(PROTOCOL_ERROR)
        self.preface_left = expected[len(seen) :]
        return data[len(seen) :]

    def _data(self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int) -> None:
        if not stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        length = stop - start
        if flags & PADDED:
            if not length or data[start] >= length:
                raise Http2ConnectionError(PROTOCOL_ERROR)
            stop -= data[start]
            start += 1
        self.recv_window -= length
        if self.recv_window < 0:
            raise Http2ConnectionError(FLOW_CONTROL_ERROR)
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if self._idle(stream_id):
                raise Http2ConnectionError(PROTOCOL_ERROR)
            if stream is not None or stream_id not in self.resets:
                self._stream_error(stream_id, STREAM_CLOSED)
            self.acknowledge(stream_id, length)  # the bytes are dropped: the connection's window comes back
            return
        stream.recv_window -= length
        stream.received += stop - start
        expected = stream.expected
        if stream.recv_window < 0:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
        elif expected >= 0 and (
            stream.received > expected or (flags & END_STREAM and stream.received != expected)
        ):
            self._stream_error(stream_id, PROTOCOL_ERROR)  # the body is not its content-length (8.1.1)
        else:
            self.handler.on_data(stream_id, view[start:stop], length)
            # (unless on_data answered the stream and reset it: a body over a limit)
            if flags & END_STREAM and self.streams.get(stream_id) is stream:
                self._remote_ended(stream_id, stream)
            return
        self.acknowledge(stream_id, length)

    def _headers(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        if not stream_id or not stream_id & 1:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        pad = 0
        if flags & PADDED:
            if start == stop:
                raise Http2ConnectionError(PROTOCOL_ERROR)
            pad = data[start]
            start += 1
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if stop - start < 5:
                raise Http2ConnectionError(FRAME_SIZE_ERROR)
            self_dependent = int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF == stream_id
            start += 5
        if pad > stop - start:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        fragment = data[start : stop - pad]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, fragment, self_dependent)
        else:
            self.block = _HeaderBlock(stream_id, flags, fragment, self_dependent)

    def _continuation(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        block = self.block
        if block is None or block.stream_id != stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        block.fragments += view[start:stop]
        block.continuations += 1
        if len(block.fragments) > self.block_limit or block.continuations > MAX_CONTINUATIONS:
            raise Http2ConnectionError(ENHANCE_YOUR_CALM)  # a CONTINUATION flood, or a head far too big
        if flags & END_HEADERS:
            self.block = None
            self._header_block(stream_id, block.flags, bytes(block.fragments), block.self_dependent)

    def _header_block(self, stream_id: int, flags: int, block: bytes, self_dependent: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._trailers(stream_id, stream, flags, self._decode(block), self_dependent)
            return
        if stream_id <= self.highest:
            if stream_id in self.resets:
                self._decode(block)  # trailers of a stream we reset: ignored, HPACK kept in step
                return
            raise Http2ConnectionError(PROTOCOL_ERROR if self._passed_over(stream_id) else STREAM_CLOSED)
        if stream_id > self.highest + 2:
            self.skipped.append((self.highest + 1, stream_id - 1))
            if len(self.skipped) > REMEMBERED_SKIPS:
                del self.skipped[0]
        self.highest = stream_id
        headers = self._decode(block)
        if self_dependent:
            self._refuse(stream_id, PROTOCOL_ERROR)
            return
        if len(self.streams) >= self.max_streams:
            self._refuse(stream_id, REFUSED_STREAM)
            return
        head = _request_head(headers)
        ended = bool(flags & END_STREAM)
        if head is None or (ended and head[4] > 0):
            self._refuse(stream_id, PROTOCOL_ERROR)  # malformed: a stream error (8.1.1)
            return
        method, path, authority, fields, expected = head
        self.streams[stream_id] = _Stream(self.initial_send_window, self.stream_window, expected, not ended)
        self.handler.on_request(stream_id, method, path, authority, fields, ended)

    def _trailers(
        self, stream_id: int, stream: _Stream, flags: int, headers: list, self_dependent: bool
    ) -> None:
        """A second header block on a stream: trailers, which end it (and are not passed on)."""
        if not stream.remote_open:
            self._stream_error(stream_id, STREAM_CLOSED)
        elif (
            not flags & END_STREAM
            or self_dependent
            or any(name[:1] == b":" for name, _ in headers)
            or (stream.expected >= 0 and stream.received != stream.expected)
        ):
            self._stream_error(stream_id, PROTOCOL_ERROR)
        else:
            self._remote_ended(stream_id, stream)

    def _refuse(self, stream_id: int, code: int) -> None:
        """A stream refused as it opens: its request never starts."""
        self._queue(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))
        self._remember_reset(stream_id)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self.decoder.decode(block)
        except HeaderListTooLarge:
            raise Http2ConnectionError(ENHANCE_YOUR_CALM) from None
        except HpackError:
            raise Http2ConnectionError(COMPRESSION_ERROR) from None

    def _remote_ended(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_open = False
        if not stream.local_open:
            self._forget(stream_id, reset_by_us=False)
        self.handler.on_stream_end(stream_id)

    def _priority(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        if not stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        if stop - start != 5:
            self._stream_error(stream_id, FRAME_SIZE_ERROR)
        elif int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF == stream_id:
            self._stream_error(stream_id, PROTOCOL_ERROR)  # a stream cannot depend on itself (5.3.1)

    def _rst_stream(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        if stop - start != 4:
            raise Http2ConnectionError(FRAME_SIZE_ERROR)
        if not stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        if stream_id not in self.streams:
            if self._idle(stream_id):
                raise Http2ConnectionError(PROTOCOL_ERROR)
            return
        self._forget(stream_id, False)
        self.handler.on_reset(stream_id)

    def _settings(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        if stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        if flags & ACK:
            if stop != start:
                raise Http2ConnectionError(FRAME_SIZE_ERROR)
            return
        if (stop - start) % 6:
            raise Http2ConnectionError(FRAME_SIZE_ERROR)
        window_changed = False
        for at in range(start, stop, 6):
            ident, value = _SETTING.unpack_from(data, at)
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2ConnectionError(FLOW_CONTROL_ERROR)
                delta = value - self.initial_send_window
                self.initial_send_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise Http2ConnectionError(FLOW_CONTROL_ERROR)
                window_changed = True
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise Http2ConnectionError(PROTOCOL_ERROR)
                self.max_send_frame = value
            elif ident == SETTINGS_ENABLE_PUSH and value > 1:
                raise Http2ConnectionError(PROTOCOL_ERROR)
        self._queue(SETTINGS, ACK, 0, b"")
        if window_changed:
            self.handler.on_window(0)

    def _push_promise(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        raise Http2ConnectionError(PROTOCOL_ERROR)  # a client cannot push (8.4)

    def _ping(self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int) -> None:
        if stop - start != 8:
            raise Http2ConnectionError(FRAME_SIZE_ERROR)
        if stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        if not flags & ACK:
            self._queue(PING, ACK, 0, data[start:stop])

    def _goaway(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        if stream_id:
            raise Http2ConnectionError(PROTOCOL_ERROR)
        if stop - start < 8:
            raise Http2ConnectionError(FRAME_SIZE_ERROR)
        self.handler.on_goaway(int.from_bytes(data[start + 4 : start + 8], "big"))

    def _window_update(
        self, data: bytes, view: memoryview, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        if stop - start != 4:
            raise Http2ConnectionError(FRAME_SIZE_ERROR)
        increment = int.from_bytes(data[start:stop], "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise Http2ConnectionError(PROTOCOL_ERROR)
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise Http2ConnectionError(FLOW_CONTROL_ERROR)
            self.handler.on_window(0)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise Http2ConnectionError(PROTOCOL_ERROR)
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        self.handler.on_window(stream_id)


_RECEIVERS = (
    FrameLayer._data,
    FrameLayer._headers,
    FrameLayer._priority,
    FrameLayer._rst_stream,
    FrameLayer._settings,
    FrameLayer._push_promise,
    FrameLayer._ping,
    FrameLayer._goaway,
    FrameLayer._window_update,
    FrameLayer._continuation,
)


def _request_head(headers: list) -> tuple[bytes, bytes, bytes, list, int] | None:
    """(method, path, authority, regular fields, content-length or -1) of a well-formed request head
    (RFC 9113 8.2, 8.3), or None: a malformed one is a stream error."""
    method = path = scheme = authority = None
    fields = []
    expected = -1
    names = []
    values = []
    for name, value in headers:
        if name[:1] == b":":
            if fields:
                return None  # a pseudo-header after a regular field
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            else:
                return None  # unknown, a response's, or repeated
            values.append(value)
            continue
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            return None
        if name == b"content-length":
            if not value.isdigit() or (expected >= 0 and int(value) != expected):
                return None
            expected = int(value)
        names.append(name)
        values.append(value)
        fields.append((name, value))
    if not method:
        return None
    connect = method == b"CONNECT" and authority and scheme is None and path is None  # 8.5: answered 405
    if not connect and (scheme is None or not path):
        return None
    joined = b"".join(values)
    if b"\r" in joined or b"\n" in joined or b"\x00" in joined:
        return None  # a CR or LF would start a header line of its own in the request to the target
    if not all(names) or b"".join(names).translate(None, _NAME_CHARS):
        return None  # an empty name, an upper-case letter, or a character no token has
    return method, path or b"", authority or b"", fields, expected
