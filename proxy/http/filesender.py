"""Sending a response whose body is parts of a file (pythrust's X-Sendfile and static files).

A `FileSender` stands in for the request's upstream connection: the client
connections already tell the upstream to pause and resume as their socket
fills and drains, and to stop when the client goes, so a file is sent with
the same back-pressure as a proxied body and never read faster than the
client takes it. On a plain TCP connection the bytes go by os.sendfile
(uvloop has no loop.sendfile), kernel to kernel, whenever the transport has
nothing buffered; otherwise (TLS, HTTP/2, a full socket) by reads of at most
CHUNK bytes, so memory stays bounded whatever the file's size. To a TLS client a
read goes a record at a time while the client takes it (tlswrites.py); what a
pause leaves of it is read again when the client drains.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import TYPE_CHECKING

from proxy.http.tlswrites import write_records, writes_tls

if TYPE_CHECKING:
    from proxy.http.request import Downstream, Request

CHUNK = 256 * 1024
# A piece of the response: bytes to send as they are, or (offset, length) of the file.
Piece = bytes | tuple[int, int]


class FileSender:
    """Writes a head and then file ranges (and framing bytes between them) to one client."""

    __slots__ = (
        "client",
        "closed",
        "fd",
        "loop",
        "paused",
        "pieces",
        "request",
        "sending",
        "socket_fd",
        "tls",
        "transport",
    )

    attached = True  # what the client connections check before pausing an upstream

    def __init__(self, client: Downstream, request: Request, fd: int, pieces: list[Piece]) -> None:
        self.client = client
        self.request: Request | None = None  # request bodies still arriving are not ours to take
        self.fd = fd
        self.pieces: deque[Piece] = deque(pieces)
        self.paused = client.write_paused
        self.closed = False
        self.transport = client.transport
        self.socket_fd = _sendfile_socket(self.transport)
        self.tls = writes_tls(self.transport)
        self.loop = asyncio.get_running_loop()
        self.sending = request
        request.upstream = self

    def start(self) -> None:
        self.client.deadline = 0.0
        self.sending.response_started = True
        self._pump()

    def _pump(self) -> None:
        pieces = self.pieces
        transport = self.transport
        request = self.sending
        while pieces and not self.paused and not self.closed:
            piece = pieces[0]
            if piece.__class__ is bytes:
                pieces.popleft()
                transport.write(piece)
                continue
            offset, length = piece
            sent = 0
            if self.socket_fd is not None and not transport.get_write_buffer_size():
                try:
                    sent = os.sendfile(self.socket_fd, self.fd, offset, length)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._abort()
                    return
            read = not sent
            if read:
                # TLS or HTTP/2, or the socket is full: through the transport, which tells the client
                # connection (and so this sender) when to pause.
                data = os.pread(self.fd, min(length, CHUNK), offset)
                if not data:
                    self._abort()  # the file shrank under us: the promised length cannot be kept
                    return
                if self.tls:
                    sent = write_records(transport, data, self.client)
                else:
                    transport.write(data)
                    sent = len(data)
            request.response_bytes += sent
            if sent == length:
                pieces.popleft()
            else:
                pieces[0] = (offset + sent, length - sent)
            if read and pieces and self.socket_fd is None:
                # An HTTP/2 stream turns the bytes into frames that reach the socket (and its
                # back-pressure) only when the loop runs: one chunk per turn, or a client with a
                # large window would have the whole file read into memory.
                self.loop.call_soon(self._pump)
                return
        if not pieces and not self.closed:
            self._close_file()
            self.client.response_finished(request)

    def _abort(self) -> None:
        self._close_file()
        self.client.abort()

    def _close_file(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    # -- what the client connection calls on its upstream ------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._pump()

    def client_gone(self) -> None:
        self._close_file()

    def cancel(self, status: int) -> None:
        self._abort()


def _sendfile_socket(transport: object) -> int | None:
    """The socket to sendfile into, when the transport is plain TCP (not TLS, not an HTTP/2 stream)."""
    # uvloop's transports are not asyncio.Transport instances; an HTTP/2 stream has no extra info.
    extra_info = getattr(transport, "get_extra_info", None)
    if extra_info is None or extra_info("ssl_object") is not None:
        return None
    sock = extra_info("socket")
    return None if sock is None else sock.fileno()
