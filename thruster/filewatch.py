"""Changes in the directories of files served from memory, told by the kernel (inotify).

A response held in memory must not outlive an edit of its file. A stat per
request tells, but costs about as much as the rest of a repeated request's
answer; inotify tells for free. Each watch is on a file's directory and is
used once: the first change the kernel reports in it (a file written,
replaced, renamed, removed, its attributes changed; the directory itself
moved or removed) marks the watch changed and removes it, so every response
held under it is dropped, and the next response held there starts a new
watch. A directory the app keeps writing to thus wakes pythrust at most
once per response it holds, and nothing stays watched that nothing uses.

Events are read when the loop sees the inotify descriptor ready, and also
at the first check of every loop turn, before the requests that the turn's
poll brought are answered: an edit finished before that poll is never
missed. One that lands while a turn's batch of requests is being answered
may be seen only from the next turn on (microseconds to a millisecond).

Linux only. Where inotify is missing or the watch limit is reached,
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
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)
MAX_WATCHED = 1024


class Directory:
    """One watch of a directory, until its first change."""

    __slots__ = ("changed", "identity", "watch")

    def __init__(self, watch: DirectoryWatch, identity: tuple[int, int]) -> None:
        self.watch = watch
        self.identity = identity  # device and inode of the directory watched
        self.changed = False

    def unchanged(self) -> bool:
        watch = self.watch
        if not watch.caught_up:
            watch.catch_up()
        return not self.changed


class DirectoryWatch:
    """One inotify instance for the directories of the responses held in memory."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.by_path: dict[str, Directory] = {}
        self.by_wd: dict[int, Directory] = {}
        self.caught_up = False
        self.fd = -1
        self._libc: ctypes.CDLL | None = None
        self._started = False

    def _start(self) -> None:
        """The inotify instance, made when the first directory is watched."""
        self._started = True
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self.fd = fd
                self._libc = libc
                self.loop.add_reader(fd, self.drain)

    def directory(self, path: str) -> tuple[Directory, bool] | None:
        """The live watch of directory `path` and whether it is new; None when it cannot be watched."""
        try:
            info = os.stat(path)
        except OSError:
            return None
        identity = (info.st_dev, info.st_ino)
        known = self.by_path.get(path)
        if known is not None:
            if known.identity == identity and not known.changed:
                return known, False
            self._forget(known)  # another directory by that name now (a deploy swapped it)
        if not self._started:
            self._start()
        if self._libc is None or len(self.by_path) >= MAX_WATCHED:
            return None
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _CHANGES)
        if wd < 0:
            return None
        directory = self.by_wd.get(wd)  # the same directory by another name (a symlink)
        if directory is None or directory.changed:
            directory = self.by_wd[wd] = Directory(self, identity)
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
        if self.fd < 0:
            return  # closed
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
                    for directory in list(self.by_wd.values()):
                        self._forget(directory)  # events were lost: nothing held can be trusted
                    continue
                directory = self.by_wd.get(wd)
                if directory is not None:
                    self._forget(directory)

    def _forget(self, directory: Directory) -> None:
        """Mark `directory` changed, and stop watching it."""
        directory.changed = True
        for wd in [wd for wd, known in self.by_wd.items() if known is directory]:
            del self.by_wd[wd]
            self._libc.inotify_rm_watch(self.fd, wd)  # the kernel then sends IN_IGNORED: unknown, skipped
        self.by_path = {path: known for path, known in self.by_path.items() if known is not directory}

    def close(self) -> None:
        for directory in list(self.by_wd.values()):
            self._forget(directory)
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
            self._libc = None
