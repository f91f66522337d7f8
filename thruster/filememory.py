"""Files kept in memory: small ones as they are, compressible ones compressed once per version.

Every use names the file's current ETag (its inode, mtime and size), so a file
edited on disk is read again rather than served stale. The bytes live in an
`HttpCache`, so they count against CACHE_SIZE and the least used go first.
"""

from __future__ import annotations

import os

from thruster.cache import CachedResponse, HttpCache
from thruster.compression import Compressor, padding_for


class FileMemory:
    def __init__(self, cache: HttpCache, jitter: int, max_compressed: int) -> None:
        self.cache = cache
        self.jitter = jitter
        self.max_compressed = max_compressed

    def content(self, path: str, etag: bytes, limit: int, fd: int | None = None) -> bytes | None:
        """The file's bytes (at most `limit` + 1 of them: more says the file grew); None if unreadable.

        Given the file already open, it is read from that descriptor, not opened again by path (which
        a symlink swapped in meanwhile could point elsewhere)."""
        key = path.encode()
        held = self.cache.get(key, _no_header)
        if held is not None and held.etag == etag:
            return held.body
        content = _read(path, limit, fd)
        if content is not None:
            self.cache.put(key, _held(content, etag), _no_header)
        return content

    def compressed(self, path: str, etag: bytes, encoding: bytes, fd: int | None = None) -> bytes | None:
        """The file compressed with `encoding`; None when unreadable or not made smaller by it (the
        content is compressed already: remembered, so it is not tried again)."""
        key = b"%s\0%s" % (path.encode(), encoding)
        held = self.cache.get(key, _no_header)
        if held is not None and held.etag == etag:
            return held.body or None
        content = _read(path, self.max_compressed, fd)
        if content is None:
            return None
        compressor = Compressor(encoding, padding_for(content, self.jitter))
        body = compressor.compress(content) + compressor.finish()
        if len(body) >= len(content):
            body = b""
        self.cache.put(key, _held(body, etag), _no_header)
        return body or None


def _read(path: str, limit: int, fd: int | None) -> bytes | None:
    try:
        if fd is not None:
            return os.pread(fd, limit + 1, 0)
        with open(path, "rb") as file:
            return file.read(limit + 1)
    except OSError:
        return None


def _held(body: bytes, etag: bytes) -> CachedResponse:
    return CachedResponse(status=200, head=b"", body=body, etag=etag, expires=float("inf"), vary=())


def _no_header(name: bytes) -> None:
    return None
