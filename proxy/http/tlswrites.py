"""Writing to TLS clients a record at a time, and no further than the socket takes.

uvloop encrypts each write to a TLS transport at once, into OpenSSL's outgoing
memory buffer (BIO), and hands that buffer's bytes to the TCP transport below
unless it is paused; OpenSSL never shrinks that buffer. So its peak (the
largest write, plus all that was written while the socket was full) stays
with the connection for as long as it is open: about 280 KB for every
connection that once carried a large response. Written a TLS record's worth
at a time, and with the TLS transport pausing its writer as soon as the TCP
transport under it is paused, the buffer stays at about one record; what
waits for a slow client waits in the writer's own buffer, which is let go
once sent.
"""

from __future__ import annotations

from typing import Protocol

RECORD = 16 * 1024  # the most plaintext one TLS record carries (RFC 8446 5.1)
# A TLS transport's high-water mark: its writer pauses once OpenSSL holds a record the socket has not
# taken, i.e. once the TCP transport under it (which buffers 64 KiB of its own) has paused.
WRITE_HIGH_WATER = RECORD


class PacedWriter(Protocol):
    """Whatever a TLS transport's pause_writing() and resume_writing() reach."""

    write_paused: bool


class TransportLike(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...


def writes_tls(transport: object) -> bool:
    """Whether `transport` is a TLS transport (not plain TCP, not an HTTP/2 stream)."""
    extra_info = getattr(transport, "get_extra_info", None)
    return extra_info is not None and extra_info("ssl_object") is not None


def write_records(transport: TransportLike, data: bytes | memoryview, writer: PacedWriter) -> int:
    """Write `data` a record at a time until `writer` is paused; return how many bytes were written."""
    size = len(data)
    if size <= RECORD:
        if writer.write_paused:
            return 0
        transport.write(data)
        return size
    view = memoryview(data)
    sent = 0
    while sent < size and not writer.write_paused:
        transport.write(view[sent : sent + RECORD])
        sent += RECORD
    return min(sent, size)
