"""Answering with a file the app named in X-Sendfile (or a cached response that did).

The app's headers are kept (Content-Type, Cache-Control, Content-Disposition,
ETag, Content-Encoding of a precompressed asset...); the status and body
come from the file, with ranges and conditional requests handled as a file
server would. With X_SENDFILE_ROOTS set, a file whose real path (read back
from the opened descriptor, so a symlink swapped in between cannot fool the
check) is outside every root is refused with a 500 and a log line.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from proxy.http.filesender import FileSender, Piece
from proxy.http.upstream import connection_tail
from thruster.compression import MIN_SIZE, compressible_type
from thruster.headers import ResponseHead
from thruster.static import content_type_for, file_etag, plan_file

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection
    from proxy.http.request import Request
    from proxy.log import JsonLog
    from thruster.exchange import Exchange

IN_MEMORY = 64 * 1024  # files up to this size are sent from memory (their bytes kept in the cache)
REASONS = {
    200: b"OK",
    206: b"Partial Content",
    304: b"Not Modified",
    403: b"Forbidden",
    404: b"Not Found",
    412: b"Precondition Failed",
    416: b"Range Not Satisfiable",
    500: b"Internal Server Error",
}


class FileRoots:
    """Where X-Sendfile may read from: anywhere when no root is configured (as thruster)."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = tuple(os.path.realpath(root) for root in roots)

    def allows(self, fd: int) -> bool:
        if not self.roots:
            return True
        real = os.readlink(f"/proc/self/fd/{fd}")
        return any(real.startswith(root.rstrip("/") + "/") for root in self.roots)


def send_file(
    client: ClientConnection,
    request: Request,
    head: ResponseHead,
    path: str,
    exchange: Exchange,
    rendered_as: tuple[bytes, bytes | None] | None = None,
) -> None:
    """Answer `request` with the file at `path`, under the app's `head` (without its connection
    headers; its X-Sendfile line is dropped here).

    A compressible file up to MAX_CACHE_ITEM_SIZE is compressed for a client that accepts it (once
    per version of the file, kept in the cache); others go out as they are on disk. A whole small
    file is sent from memory and, given `rendered_as`, its response kept for the next such request.
    """
    if not request.complete:
        request.keep_alive = False  # answered before its body was read: the connection closes
    tail = connection_tail(request, client)
    app = exchange.app
    head.remove(
        b"x-sendfile",
        b"x-accel-redirect",
        b"content-length",
        b"transfer-encoding",
        b"content-range",
        b"accept-ranges",
    )
    try:
        # Non-blocking: a FIFO named by mistake must not stall the server (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        _answer_plain(client, request, head, 404, b"404 page not found\n")
        return
    except PermissionError:
        _answer_plain(client, request, head, 403, b"403 Forbidden\n")
        return
    except OSError as exc:
        app.log.info("X-Sendfile file cannot be opened", path=path, error=exc.strerror)
        _answer_plain(client, request, head, 500, b"500 Internal Server Error\n")
        return
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        _answer_plain(client, request, head, 404, b"404 page not found\n")
        return
    if not app.roots.allows(fd):
        os.close(fd)
        refuse(client, request, head, app.log, "X-Sendfile path outside X_SENDFILE_ROOTS", path=path)
        return
    # The file's identity decides whether bytes kept in memory are still this file's; the app's own
    # ETag, if it gave one, is what the client sees.
    identity = file_etag(info.st_size, info.st_mtime_ns, info.st_ino)
    etag = head.get(b"etag") or identity
    content_type = head.get(b"content-type") or content_type_for(path)
    body = None
    if (
        MIN_SIZE <= info.st_size <= app.max_cache_item_size
        and b"range" not in exchange.headers
        and app.should_compress(head)
        and compressible_type(content_type)
    ):
        encoding = app.encoding_for(request, exchange.headers)
        if encoding is not None:
            compressed_etag = etag[:-1] + b"-" + encoding + b'"'  # a validator per representation
            body = app.files.compressed(path, identity, encoding, fd)
            if body is not None:
                etag = compressed_etag
                head.set(b"Content-Encoding", encoding)
    plan = plan_file(
        info.st_size if body is None else len(body),
        info.st_mtime,
        method=request.method,
        header=exchange.headers.get,
        etag=etag,
        content_type=content_type,
    )
    for name, value in plan.headers:
        head.set(name, value)
    if plan.status == 304:
        head.remove(b"content-type", b"content-length")
    head.set_status(plan.status, REASONS.get(plan.status, b""))
    request.status = plan.status
    whole = not request.is_head and not plan.parts and plan.ranges == [(0, info.st_size)]
    if body is None and whole and info.st_size <= IN_MEMORY:
        body = app.files.content(path, identity, IN_MEMORY, fd)
        if body is not None and len(body) != info.st_size:
            body = None  # changed under us: sent from the open file
    if body is not None and not request.is_head and plan.ranges:
        # The whole body from memory (compressed, or small; Range requests are never compressed).
        os.close(fd)
        request.response_bytes = len(body)
        request.response_started = True
        client.transport.write(head.to_bytes(tail) + body)
        client.response_finished(request)
        if rendered_as is not None and plan.status == 200:
            app.rendered.put(rendered_as, path, info, head.to_bytes(b""), body)
        return
    pieces: list[Piece] = [head.to_bytes(tail)]
    if not request.is_head:
        if plan.parts:
            for part, file_range in zip(plan.parts, plan.ranges, strict=False):
                pieces += (part, file_range)
            pieces.append(plan.parts[-1])
        else:
            pieces += plan.ranges
    FileSender(client, request, fd, pieces).start()


def refuse(
    client: ClientConnection, request: Request, head: ResponseHead, log: JsonLog, reason: str, **fields: str
) -> None:
    """A file the app may not name: 500 for the client (never the file), the reason in the log."""
    log.info(reason, **fields)
    _answer_plain(client, request, head, 500, b"500 Internal Server Error\n")


def _answer_plain(
    client: ClientConnection, request: Request, head: ResponseHead, status: int, body: bytes
) -> None:
    """A short text answer in place of the file."""
    head.clear()
    head.set(b"Content-Type", b"text/plain; charset=utf-8")
    head.set(b"Content-Length", b"%d" % len(body))
    head.set_status(status, REASONS[status])
    request.status = status
    head_bytes = head.to_bytes(connection_tail(request, client))
    client.transport.write(head_bytes + (b"" if request.is_head else body))
    client.response_finished(request)
