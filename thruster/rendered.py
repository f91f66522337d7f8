"""Whole responses for small files, ready to write: the fast path of repeated requests.

A static asset or a cached X-Sendfile file is asked for again and again with
the same headers. Its full 200 response (head and body) is kept for a second
under the URL (or cache key) and the client's Accept-Encoding; each use
checks the file's identity with one stat, so an edited file is never served
from here. Requests with validators or a Range take the full path.
"""

from __future__ import annotations

import asyncio
import os
from typing import NamedTuple

RENDERED_FOR = 1.0
MAX_RENDERED = 4096
PLAIN_REQUEST = frozenset(
    (b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since")
)


class Rendered(NamedTuple):
    expires: float
    path: str
    identity: tuple[int, int, int]  # size, mtime_ns, inode of the file when the response was made
    head: bytes  # status line and headers, without the connection tail and the blank line
    body: bytes


class RenderedResponses:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.held: dict[tuple, Rendered] = {}

    def get(self, key: tuple) -> Rendered | None:
        held = self.held.get(key)
        if held is None or held.expires < self.loop.time():
            return None
        try:
            info = os.stat(held.path)
        except OSError:
            return None
        if (info.st_size, info.st_mtime_ns, info.st_ino) != held.identity:
            return None
        return held

    def put(self, key: tuple, path: str, info: os.stat_result, head: bytes, body: bytes) -> None:
        if len(self.held) >= MAX_RENDERED:
            self.held.clear()
        identity = (info.st_size, info.st_mtime_ns, info.st_ino)
        self.held[key] = Rendered(self.loop.time() + RENDERED_FOR, path, identity, head, body)
