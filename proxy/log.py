"""JSON log lines on stdout, shaped like kamal-proxy's (`time`, `level`, `msg`, attributes).

Control-plane events are written at once. Access-log lines are hot: they are
appended to a buffer that `flush` writes out, at least every sweep of the
server (a tenth of a second) and whenever it grows large. Where several
processes write to one stdout (`--workers`), each write holds whole lines and
at most PIPE_BUF bytes, which a pipe never splits or interleaves.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

_FLUSH_AT = 64 * 1024
_MILLIS = tuple(b".%03dZ" % fraction for fraction in range(1000))  # a timestamp's end, by millisecond


class JsonLog:
    """Writes log lines to a file descriptor (stdout unless told otherwise)."""

    def __init__(self, fd: int | None = None, debug: bool = False, shared: bool = False) -> None:
        """`shared`: other processes write to the same file (workers): lines must not interleave."""
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.debug_enabled = debug
        self.shared = shared
        self.buffer: list[bytes] = []
        self.buffered = 0
        self._millis = -1
        self._millis_text = b""
        self._second: int | None = None
        self._second_text = b""

    def timestamp(self, now: float) -> bytes:
        """RFC 3339 UTC with milliseconds, made once per millisecond (many requests share one) from the
        second's text, formatted once per second: strftime costs more than the rest of a log line."""
        millis = int(now * 1000)
        if millis != self._millis:
            self._millis = millis
            second = millis // 1000
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._millis_text = self._second_text + _MILLIS[millis - second * 1000]
        return self._millis_text

    def event(self, level: str, msg: str, **attrs: Any) -> None:
        """Write one control-plane line now."""
        fields = {"time": self.timestamp(time.time()).decode(), "level": level, "msg": msg, **attrs}
        self.buffer.append(json.dumps(fields, default=str).encode() + b"\n")
        self.flush()

    def info(self, msg: str, **attrs: Any) -> None:
        self.event("INFO", msg, **attrs)

    def warn(self, msg: str, **attrs: Any) -> None:
        self.event("WARN", msg, **attrs)

    def error(self, msg: str, **attrs: Any) -> None:
        self.event("ERROR", msg, **attrs)

    def debug(self, msg: str, **attrs: Any) -> None:
        if self.debug_enabled:
            self.event("DEBUG", msg, **attrs)

    def write_buffered(self, line: bytes) -> None:
        """Queue a ready-made line; written by the next `flush`."""
        self.buffer.append(line)
        self.buffered += len(line)
        if self.buffered > _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        if not self.shared:
            self._write(memoryview(data))
            return
        start, size = 0, len(data)
        while start < size:
            end = start + select.PIPE_BUF
            if end < size:  # cut after the last whole line that fits; a longer line goes alone
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else (data.find(b"\n", end) + 1 or size)
            self._write(memoryview(data)[start:end])
            start = end

    def _write(self, view: memoryview) -> None:
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)  # a non-blocking pipe is full: wait, don't spin
                continue
            except OSError:
                return
            view = view[written:]
