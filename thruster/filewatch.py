"""Changes in the directories of files served from memory, told by the kernel (inotify).

A response held in memory must not outlive an edit of its file. A stat per
request tells, but costs about as much as the rest of a repeated request's
answer; inotify tells for free. A directory's watch counts the changes the
kernel reported in it (a file written, replaced, renamed, removed, its
attributes changed), and a held response is good while that count is the one
it was made under. Events are read when the loop sees the inotify descriptor
ready and, so that an edit finished before a request was read is never
missed, also at the first check of every loop turn.

Linux only. Where inotify is missing or its watch limit is reached,
`directory` returns None and callers stat the file instead. Changes the
local kernel does not see (another machine writing to NFS) are not told;
held responses are dropped after a second anyway (thruster/rendered.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct

_CHANGES = (
    0x2  # IN_MODIFY
    | 0x4  # IN_ATTRIB
    | 0x8  # IN_CLOSE_WRITE
    | 0x40  # IN_MOVED_FROM
    | 0x80  # IN_MOVED_TO
    | 0x100  # IN_CREATE
    | 0x200  # IN_DELETE
    | 0x400  # IN_DELETE_SELF
    | 0x800  # IN_MOVE_SELF
    | 0x01000000  # IN_ONLYDIR
)
_Q_OVERFLOW = 0x4000
_IGNORED = 0x8000  # the watch is gone (its directory was removed)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)
MAX_WATCHED = 1024


class Directory:
    """One watched directory: `changes` grows with every change the kernel reports in it."""

    __slots__ = ("changes", "watch")

    def __init__(self, watch: DirectoryWatch) -> None:
        self.watch = watch
        self.changes = 0

    def unchanged_since(self, changes: int) -> bool:
        watch = self.watch
        if not watch.caught_up:
            watch.catch_up()
        return self.changes == changes


class DirectoryWatch:
    """One inotify instance for the directories of the responses held in memory."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.by_path: dict[str, Directory] = {}
        self.by_wd: dict[int, Directory] = {}
        self.caught_up = False
        self.fd = -1
        self._add_watch = None
        self._started = False

    def _start(self) -> None:
        """The inotify instance, made when the first directory is watched."""
        self._started = True
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self.fd = fd
                self._add_watch = libc.inotify_add_watch
                self.loop.add_reader(fd, self.drain)

    def directory(self, path: str) -> tuple[Directory, bool] | None:
        """The watch of directory `path` and whether it is new; None when it cannot be watched."""
        known = self.by_path.get(path)
        if known is not None:
            return known, False
        if not self._started:
            self._start()
        if self._add_watch is None or len(self.by_path) >= MAX_WATCHED:
            return None
        wd = self._add_watch(self.fd, os.fsencode(path), _CHANGES)
        if wd < 0:
            return None
        directory = self.by_wd.get(wd)  # the same directory by another name (a symlink)
        if directory is None:
            directory = self.by_wd[wd] = Directory(self)
        self.by_path[path] = directory
        return directory, True

    def catch_up(self) -> None:
        """Read the events queued so far (once per loop turn: `caught_up` says whether done)."""
        self.caught_up = True
        self.loop.call_soon(self._next_turn)
        self.drain()

    def _next_turn(self) -> None:
        self.caught_up = False

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _, name_length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + name_length
                if mask & _Q_OVERFLOW:
                    self._forget_all()  # events were lost: nothing held can be trusted
                    return
                directory = self.by_wd.get(wd)
                if directory is not None:
                    directory.changes += 1
                    if mask & _IGNORED:
                        self._forget(wd, directory)

    def _forget(self, wd: int, directory: Directory) -> None:
        del self.by_wd[wd]
        self.by_path = {path: known for path, known in self.by_path.items() if known is not directory}

    def _forget_all(self) -> None:
        for directory in self.by_wd.values():
            directory.changes += 1
        self.by_wd.clear()
        self.by_path.clear()
