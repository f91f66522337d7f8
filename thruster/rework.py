"""A response body pythrust changes on its way to the client: compressed, and/or kept for the cache.

The body arrives decoded, piece by piece as the app sends it. With a known
length, compression waits for up to 64 KiB (or the end) so the BREACH
padding can be derived from the content; a streamed response (no length:
SSE, chunked) is compressed and flushed piece by piece, so the client gets
each event as soon as the app sends it. The cache gets the uncompressed body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from thruster.compression import PREFIX_LIMIT, Compressor, padding_for
from thruster.headers import ResponseHead

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection
    from proxy.http.request import Request


class Rework:
    """Writes the changed head at once, then the body through an encoder, chunked."""

    ends_at_head = False

    __slots__ = (
        "buffered",
        "captured",
        "captured_size",
        "chunked",
        "compressor",
        "encoding",
        "jitter",
        "max_capture",
        "on_captured",
        "request",
        "streamed",
        "transport",
    )

    def __init__(
        self,
        client: ClientConnection,
        request: Request,
        head: ResponseHead,
        encoding: bytes | None,
        jitter: int,
        on_captured: Callable[[bytes], None] | None,
        max_capture: int,
    ) -> None:
        self.transport = client.transport
        self.request = request
        self.encoding = encoding
        self.jitter = jitter
        self.on_captured = on_captured
        self.max_capture = max_capture
        self.captured: list[bytes] = []
        self.captured_size = 0
        self.buffered: list[bytes] = []
        self.compressor: Compressor | None = None
        self.streamed = not head.has(b"content-length")
        if encoding is not None:
            head.remove(b"content-length", b"accept-ranges")
            head.set(b"Content-Encoding", encoding)
        # Without a length (compressed, or streamed by the app) the body is chunked; HTTP/1.0
        # clients are never sent a reworked body of unknown length (see Exchange).
        self.chunked = not head.has(b"content-length")
        if self.chunked:
            head.set(b"Transfer-Encoding", b"chunked")
        self.transport.write(head.to_bytes())

    def body(self, data: bytes) -> None:
        if self.on_captured is not None:
            self.captured_size += len(data)
            if self.captured_size > self.max_capture:
                self.on_captured = None  # too big to keep: it is still sent
                self.captured = []
            else:
                self.captured.append(data)
        if self.encoding is None:
            self._send(data)
            return
        compressor = self.compressor
        if compressor is None:
            self.buffered.append(data)
            if not self.streamed and sum(map(len, self.buffered)) < PREFIX_LIMIT:
                return
            data = b"".join(self.buffered)
            self.buffered = []
            compressor = self._start_compressor(data)
        out = compressor.compress(data)
        if self.streamed:
            out += compressor.flush()
        self._send(out)

    def end(self, client: ClientConnection, request: Request) -> None:
        if self.encoding is not None:
            compressor = self.compressor
            if compressor is None:
                data = b"".join(self.buffered)
                compressor = self._start_compressor(data)
                self._send(compressor.compress(data) + compressor.finish())
            else:
                self._send(compressor.finish())
        if self.chunked:
            self.transport.write(b"0\r\n\r\n")
        if self.on_captured is not None:
            self.on_captured(b"".join(self.captured))
        client.response_finished(request)

    def _start_compressor(self, prefix: bytes) -> Compressor:
        self.compressor = Compressor(self.encoding, padding_for(prefix, self.jitter))
        return self.compressor

    def _send(self, data: bytes) -> None:
        if not data:
            return
        self.request.response_bytes += len(data)
        if self.chunked:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.transport.write(data)
