"""A small HTTP/2 client on the `h2` library, for tests that need control a browser would not give.

It runs many streams on one TLS connection and lets a test stop opening the
flow-control window (a client that does not read) or watch its own send window
(to see that an upload is held back).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events


@dataclass
class StreamState:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    reset_code: int | None = None
    unacked: int = 0

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class H2Client:
    """One HTTP/2 connection over TLS (ALPN h2) to the proxy's HTTPS port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host  # the :authority of requests
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.streams: dict[int, StreamState] = {}
        self.auto_ack = True  # give back window as data arrives, as a reading client does
        self.window_opened = asyncio.Event()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, host: str, context: ssl.SSLContext | None) -> H2Client:
        """Over TLS with ALPN h2; with no context, cleartext HTTP/2 with prior knowledge (h2c)."""
        if context is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            context.set_alpn_protocols(["h2", "http/1.1"])
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=host
            )
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer, host)
        client.conn.initiate_connection()
        client.flush()
        client.task = asyncio.get_running_loop().create_task(client._read())
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._handle(event)
                self.flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.done.set()

    def _handle(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.unacked += event.flow_controlled_length
        elif isinstance(event, h2.events.StreamEnded):
            stream.done.set()
        elif isinstance(event, h2.events.StreamReset):
            stream.reset_code = event.error_code
            stream.done.set()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_opened.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def start(
        self, path: str, method: str = "GET", headers: list[tuple[str, str]] | None = None, end: bool = True
    ) -> int:
        """Open a stream with a request head; return its id."""
        stream_id = self.conn.get_next_available_stream_id()
        scheme = "https" if self.writer.get_extra_info("ssl_object") else "http"
        request = [(":method", method), (":scheme", scheme), (":authority", self.host), (":path", path)]
        self.conn.send_headers(stream_id, [*request, *(headers or [])], end_stream=end)
        self.streams[stream_id] = StreamState()
        self.flush()
        return stream_id

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """Send `body` as the window allows, then end the stream."""
        view = memoryview(body)
        while view:
            window = self.conn.local_flow_control_window(stream_id)
            if window <= 0:
                self.window_opened.clear()
                await self.writer.drain()
                await self.window_opened.wait()
                continue
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            self.conn.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
            self.flush()
        self.conn.end_stream(stream_id)
        self.flush()
        await self.writer.drain()

    async def response(self, stream_id: int, timeout: float = 10) -> Response:
        stream = self.streams[stream_id]
        await asyncio.wait_for(stream.done.wait(), timeout)
        # RST_STREAM NO_ERROR after a whole response only asks the client to stop sending (RFC 9113 8.1).
        answered = stream.headers and stream.reset_code in (None, h2.errors.ErrorCodes.NO_ERROR)
        assert answered, f"stream {stream_id} was reset: {stream.reset_code!r}"
        return Response(stream.status, dict(stream.headers), bytes(stream.body))

    async def get(self, path: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return await self.response(self.start(path, headers=headers))

    def open_window(self, stream_id: int) -> None:
        """Give back everything received so far (for a test that had stopped doing so)."""
        stream = self.streams[stream_id]
        if stream.unacked:
            self.conn.acknowledge_received_data(stream.unacked, stream_id)
            stream.unacked = 0
            self.flush()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.writer.close()
