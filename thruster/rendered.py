"""Whole responses for small files, ready to write: the fast path of repeated requests.

A static asset or a cached X-Sendfile file is asked for again and again with
the same headers. Its full 200 response (head and body) is kept for a second
under the URL (or cache key) and the client's Accept-Encoding; an edit of
the file, told by inotify (thruster/filewatch.py) or else found by a stat at
each use, drops it, so an edited file is never served from here. Requests
with validators or a Range take the full path.
"""

from __future__ import annotations

import asyncio
import os

from thruster.filewatch import Directory, DirectoryWatch

RENDERED_FOR = 1.0
MAX_RENDERED = 4096
PLAIN_REQUEST = frozenset(
    (b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since")
)


class Rendered:
    """One ready response, and how to tell that its file has not changed since it was made."""

    __slots__ = ("body", "directory", "expires", "head", "identity", "path")

    def __init__(
        self,
        expires: float,
        path: str,
        info: os.stat_result,
        head: bytes,
        body: bytes,
        directory: Directory | None,
    ) -> None:
        self.expires = expires
        self.path = path
        self.identity = _identity(info)
        self.head = head  # status line and headers, without the connection tail and the blank line
        self.body = body
        self.directory = directory  # the watch of the file's directory; None: stat at each use

    def unchanged(self) -> bool:
        """Whether the file is still the one the response was made from."""
        directory = self.directory
        if directory is not None:
            return directory.unchanged()
        return _same_file(self.path, self.identity)


class RenderedResponses:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.held: dict[tuple, Rendered] = {}
        self.watch = DirectoryWatch()

    def get(self, key: tuple) -> Rendered | None:
        held = self.held.get(key)
        if held is None or held.expires < self.loop.time() or not held.unchanged():
            return None
        return held

    def put(self, key: tuple, path: str, info: os.stat_result, head: bytes, body: bytes) -> None:
        # A path through a symlink (an X-Sendfile path the app named) is checked by a stat at each use:
        # an edit of the target, or the link pointed elsewhere, happens outside the watched directory.
        watched = self.watch.directory(os.path.dirname(path)) if os.path.realpath(path) == path else None
        directory = None
        if watched is not None:
            directory, new = watched
            if new and not _same_file(path, _identity(info)):
                return  # changed between `info` and the start of the watch: not told, not kept
        if len(self.held) >= MAX_RENDERED:
            self.held.clear()
        self.held[key] = Rendered(self.loop.time() + RENDERED_FOR, path, info, head, body, directory)


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_ino


def _same_file(path: str, identity: tuple[int, int, int]) -> bool:
    try:
        return _identity(os.stat(path)) == identity
    except OSError:
        return False
