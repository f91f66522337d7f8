"""`--h2c`: cleartext HTTP/2 with prior knowledge (RFC 9113 3.3) on the HTTP port, next to HTTP/1.1.

For pyproxy behind another proxy or load balancer that speaks HTTP/2 to its
backends without TLS. A connection that opens with the HTTP/2 preface is
served as HTTP/2, any other as HTTP/1.1; the choice is made on the first bytes,
then this protocol steps aside. (The `Upgrade: h2c` dance of HTTP/1.1 is not
offered: RFC 9113 deprecates it.)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.http.client import ClientConnection
from proxy.http.h2wire import PREFACE
from proxy.http.http2 import Http2Connection

if TYPE_CHECKING:
    from proxy.http.contracts import ServerContext


class CleartextProtocolChooser(asyncio.Protocol):
    """Reads just enough of a new plain connection to tell HTTP/2 from HTTP/1.1."""

    def __init__(self, server: ServerContext, port: int) -> None:
        self.server = server
        self.port = port
        self.seen = b""
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # A client that stops inside the preface gets the time limit of a request head.
        self.deadline = self.server.loop.call_later(self.server.header_timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        seen = self.seen + data
        if len(seen) < len(PREFACE) and PREFACE.startswith(seen):
            self.seen = seen
            return
        self.deadline.cancel()
        if seen.startswith(PREFACE):
            protocol: asyncio.Protocol = Http2Connection(self.server, self.port, scheme=b"http")
        else:
            protocol = ClientConnection(self.server, b"http", self.port)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(seen)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
