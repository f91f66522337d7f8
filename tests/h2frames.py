"""A raw-frame HTTP/2 client over TLS, for conformance tests that must send what no real client would.

h2's own `H2Connection` refuses to emit malformed frames, so the conformance tests build frames with
hyperframe (or `raw_frame` when even hyperframe refuses), header blocks with hpack, and read the server's
answer one frame at a time, as h2spec does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Final, TypeVar

from h2.errors import ErrorCodes
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE: Final = 9

Header = tuple[str, str]
F = TypeVar("F", bound=Frame)


class Closed:
    """The type of `CLOSED`: what reads return once the server has closed the connection."""

    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Final = Closed()


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame serialised by hand: hyperframe refuses to build some of the malformed frames tests need."""
    header = len(payload).to_bytes(3, "big") + bytes([frame_type, flags]) + stream_id.to_bytes(4, "big")
    return header + payload


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def describe(frame: Frame | Closed) -> str:
    """A one-line account of a received frame, so a failing test says what the server actually did."""
    if isinstance(frame, Closed):
        return "CLOSED"
    flags = "|".join(sorted(frame.flags))
    kind = type(frame).__name__.removesuffix("Frame").upper()
    text = f"{kind}(stream={frame.stream_id}{', ' + flags if flags else ''}"
    if isinstance(frame, GoAwayFrame):
        text += f", last_stream={frame.last_stream_id}, {error_name(frame.error_code)}"
        if frame.additional_data:
            text += f", debug={bytes(frame.additional_data)!r}"
    elif isinstance(frame, RstStreamFrame):
        text += f", {error_name(frame.error_code)}"
    elif isinstance(frame, SettingsFrame):
        text += f", {dict(frame.settings)}"
    elif isinstance(frame, DataFrame):
        text += f", {len(frame.data)} bytes"
    elif isinstance(frame, WindowUpdateFrame):
        text += f", +{frame.window_increment}"
    elif isinstance(frame, PingFrame):
        text += f", {bytes(frame.opaque_data)!r}"
    return text + ")"


class H2RawClient:
    """One TLS connection to the proxy with ALPN h2, driven frame by frame.

    Server SETTINGS are ACKed as they are read (any real client must, and a server may wait for it);
    HEADERS/CONTINUATION blocks are HPACK-decoded as they arrive so the decoder stays in step with the
    server's dynamic table. Every frame read is kept in `received` for failure messages.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.server_settings: dict[int, int] = {}
        self.received: list[Frame] = []
        self.header_blocks: dict[int, list[list[Header]]] = {}
        self.closed = False
        self._block: tuple[int, bytearray] | None = None

    @classmethod
    async def connect(
        cls, port: int, host: str, context: ssl.SSLContext, *, handshake: bool = True, timeout: float = 5
    ) -> H2RawClient:
        """Open TLS offering only h2; with `handshake`, exchange prefaces and SETTINGS (both ACKed)."""
        context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host), timeout
        )
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if alpn != "h2":
            writer.close()
            raise AssertionError(f"ALPN selected {alpn!r} instead of 'h2': the server does not offer HTTP/2")
        client = cls(reader, writer, host)
        if handshake:
            await client.handshake(timeout)
        return client

    async def handshake(self, timeout: float = 5) -> None:
        """Send the preface and our SETTINGS; wait for the server's SETTINGS and its ACK of ours.

        Tests start from an established connection, so an error they provoke cannot be blamed on a
        preface still in flight.
        """
        self.send_raw(PREFACE)
        self.send(SettingsFrame(0))
        got_settings = got_ack = False
        while not (got_settings and got_ack):
            frame = await self.wait_for(SettingsFrame, timeout=timeout)
            if isinstance(frame, Closed):
                raise AssertionError(f"connection closed during the handshake: {self.summary()}")
            if "ACK" in frame.flags:
                got_ack = True
            else:
                got_settings = True

    def send(self, frame: Frame) -> None:
        self.send_raw(frame.serialize())

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def headers_block(self, headers: list[Header]) -> bytes:
        """HPACK-encode with the connection's one encoder (its dynamic table must match the server's)."""
        return self.encoder.encode(headers)

    def request_headers(self, path: str = "/", method: str = "GET", host: str | None = None) -> list[Header]:
        return [(":method", method), (":scheme", "https"), (":authority", host or self.host), (":path", path)]

    def send_headers(
        self,
        stream_id: int,
        headers: list[Header] | None = None,
        *,
        end_stream: bool = True,
        end_headers: bool = True,
    ) -> None:
        """A HEADERS frame; a GET of / unless `headers` are given."""
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        block = self.headers_block(headers if headers is not None else self.request_headers())
        self.send(HeadersFrame(stream_id, block, flags=flags))

    async def next_frame(self, timeout: float = 5) -> Frame | Closed:
        """The next frame from the server, or CLOSED at EOF or on a reset; TimeoutError if none comes."""
        if self.closed:
            return CLOSED
        try:
            header = await asyncio.wait_for(self.reader.readexactly(FRAME_HEADER_SIZE), timeout)
            frame, length = Frame.parse_frame_header(memoryview(header))
            body = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        except TimeoutError:  # an OSError since 3.11, but the connection is still open
            raise
        except (asyncio.IncompleteReadError, OSError):  # EOF, reset, or a TLS alert
            self.closed = True
            return CLOSED
        frame.parse_body(memoryview(body))
        self.received.append(frame)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
            self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            self._collect_header_block(frame)
        return frame

    def _collect_header_block(self, frame: HeadersFrame | ContinuationFrame) -> None:
        if isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, bytearray(frame.data))
        elif self._block is not None:
            self._block[1].extend(frame.data)
        if "END_HEADERS" in frame.flags and self._block is not None:
            stream_id, data = self._block
            self._block = None
            decoded = [(str(name), str(value)) for name, value in self.decoder.decode(bytes(data))]
            self.header_blocks.setdefault(stream_id, []).append(decoded)

    async def wait_for(
        self, kind: type[F], predicate: Callable[[F], bool] | None = None, timeout: float = 5
    ) -> F | Closed:
        """The first frame of `kind` matching `predicate`, skipping others; CLOSED if the server closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                frame = await self.next_frame(remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"no {kind.__name__} within {timeout}s; received: {self.summary()}"
                ) from None
            if isinstance(frame, Closed):
                return frame
            if isinstance(frame, kind) and (predicate is None or predicate(frame)):
                return frame

    async def wait_closed(self, timeout: float = 5) -> bool:
        """Read (and keep) frames until the server closes; False if it is still open after `timeout`."""
        with contextlib.suppress(TimeoutError):
            await self.wait_for(Frame, lambda _: False, timeout)
        return self.closed

    async def read_response(self, stream_id: int, timeout: float = 5) -> tuple[list[Header], bytes]:
        """The response headers and body on `stream_id`, replenishing flow-control windows as data comes."""
        body = bytearray()
        while True:
            frame = await self.next_frame(timeout)
            if isinstance(frame, Closed | GoAwayFrame | RstStreamFrame):
                raise AssertionError(f"stream {stream_id} did not complete: {self.summary()}")
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, DataFrame) and frame.data:
                body.extend(frame.data)
                self.send(WindowUpdateFrame(0, window_increment=len(frame.data)))
                if "END_STREAM" not in frame.flags:
                    self.send(WindowUpdateFrame(stream_id, window_increment=len(frame.data)))
            if "END_STREAM" in frame.flags:
                blocks = self.header_blocks.get(stream_id) or [[]]
                return blocks[0], bytes(body)

    def summary(self) -> str:
        frames = [describe(frame) for frame in self.received] + (["CLOSED"] if self.closed else [])
        return ", ".join(frames) or "nothing"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
