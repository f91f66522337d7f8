"""The connection to the app: the proxy's upstream connection, with pythrust's say over each response.

When the app's response head is in, the request's `Exchange` decides what
becomes of it (see thruster/exchange.py). Most responses are relayed as the
proxy relays them, raw, with at most their head changed; a response to
compress or to keep in the cache is "reworked": its body arrives decoded
(httptools' on_body) and goes through a `Rework`; an X-Sendfile response's
body is dropped and the file is sent once the app's response has ended,
when this connection is already back in the pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import httptools

from proxy.http.upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection
    from proxy.http.request import Request


class ResponseWork(Protocol):
    """What takes over a response's body and its end."""

    ends_at_head: bool  # the app's body is of no interest: do not wait for it

    def body(self, data: bytes) -> None: ...

    def end(self, client: ClientConnection, request: Request) -> None: ...


class AppConnection(UpstreamConnection):
    __slots__ = ("client_head", "work")

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__(pool)
        self.work: ResponseWork | None = None
        self.client_head = b""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.in_head:
            return  # an interim response, relayed as it is
        request = self.request
        head = UpstreamConnection._response_head(self)
        self.client_head, self.work = request.context.response(request, self.client, head)
        if self.work is not None and self.work.ends_at_head:
            # X-Sendfile: some apps (Flask) give the file's length as Content-Length and send no
            # body. The response ends here; the connection is not reused, as its framing is unknown.
            self.response_done = True
            self.keep_alive = False

    def _response_head(self) -> bytes:
        return self.client_head

    def _send_head(self) -> None:
        if self.work is None:
            super()._send_head()
        # else: the work wrote the head, or will (the body comes to it decoded)

    def on_body(self, body: bytes) -> None:
        work = self.work
        if work is not None:
            work.body(body)

    def buffer_updated(self, nbytes: int) -> None:
        if self.work is None or self.in_head:
            super().buffer_updated(nbytes)
            return
        # Reworked: only parse (the body reaches the work through on_body), never relay raw bytes.
        try:
            self.parser.feed_data(self.read_view[:nbytes])
        except httptools.HttpParserError:
            self._fail_midway()
            return
        if self.overrun:
            self._fail_midway()
        elif self.response_done:
            self._finish()

    def _complete(self, client: ClientConnection, request: Request) -> None:
        work, self.work = self.work, None
        self.client_head = b""
        if work is None:
            client.response_finished(request)
        else:
            work.end(client, request)

    def _fail_midway(self) -> None:
        self.work = None
        super()._fail_midway()
