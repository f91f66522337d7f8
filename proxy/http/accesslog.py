"""The per-request access-log line, built from a bytes template.

`json.dumps` of a dict costs several microseconds per request; formatting
bytes and escaping only the fields that can carry client text is several
times cheaper, and the line reads the same.
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.http.replay import Replay
    from proxy.http.request import Downstream, Request

# Printable ASCII that needs no escaping inside a JSON string.
_PLAIN = bytes(sorted(set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}))


def json_bytes(value: bytes) -> bytes:
    """`value` as a JSON string literal; plain ASCII (the usual case) skips the encoder."""
    if not value.translate(None, _PLAIN):
        return b'"%s"' % value
    return encode_basestring_ascii(value.decode("utf-8", "replace")).encode()


class LineSink(Protocol):
    """Where access-log lines go: appended to a buffer, written out later."""

    def timestamp(self, now: float) -> bytes:
        """`now` (time.time()) as the line's time field."""

    def write_buffered(self, line: bytes) -> None: ...


class EngineLog(LineSink, Protocol):
    """The log the engine writes to (the program's log, proxy/log.py's `JsonLog`)."""

    def flush(self) -> None:
        """Write out the buffered lines."""

    def error(self, msg: str, **attrs: Any) -> None:
        """Write one error line now."""


class AccessLog:
    """Formats one JSON line per finished request into the server's log buffer."""

    def __init__(self, log: LineSink) -> None:
        self.log = log

    def write(self, client: Downstream, request: Request) -> None:
        now = time.time()
        host, url, request_id = request.host, request.url, request.request_id or b""
        method, user_agent, service = request.method, request.user_agent, request.service
        if b"".join((host, url, request_id, method, user_agent, service)).translate(None, _PLAIN):
            # Something needs escaping (rare): escape field by field, then strip the quotes
            # the template already has.
            host, url, request_id, method, user_agent, service = (
                json_bytes(value)[1:-1] for value in (host, url, request_id, method, user_agent, service)
            )
        path, _, query = url.partition(b"?")
        pool = request.pool
        line = _TEMPLATE % (
            self.log.timestamp(now),
            host,
            path,
            request_id,
            request.status or 200,
            service,
            pool.address_bytes if pool is not None else b"",
            int((now - request.started_at) * 1e9),
            method,
            request.response_bytes,
            user_agent,
            b"HTTP/1.0" if request.http10 else client.protocol,
            query,
            request.extra_log,
            client.log_fields,
        )
        self.log.write_buffered(line)

    def fixed_fields(self, client: Downstream, request: Request) -> tuple[bytes, bytes]:
        """The parts of `request`'s line before and after the duration, for `write_replayed`.

        Cut from the line `write` makes (into a sink, not the log): one formatting, and no cost
        added to `write`, which runs for every request."""
        sink = _KeptLine()
        AccessLog(sink).write(client, request)
        line = sink.line
        duration_at = line.index(_DURATION) + len(_DURATION)  # client text has its quotes escaped
        end_at = line.index(_AFTER_DURATION, duration_at)
        return line[len(_KEPT_START) : duration_at], line[end_at : -len(client.log_fields) - 2]

    def write_replayed(self, client: Downstream, replay: Replay, started_at: float) -> None:
        """The line of a request answered again from its kept answer (proxy/http/replay.py)."""
        now = time.time()
        line = _REPLAYED % (
            self.log.timestamp(now),
            replay.log_middle,
            int((now - started_at) * 1e9),
            replay.log_end,
            client.log_fields,
        )
        self.log.write_buffered(line)

    @staticmethod
    def connection_fields(port: int, client_ip: bytes, scheme: bytes) -> bytes:
        """The part of every line that is the same for all requests of one connection."""
        return b'"port":%d,"client_addr":"%s","scheme":"%s"' % (port, client_ip, scheme)


_TEMPLATE = (
    b'{"time":"%s","level":"INFO","msg":"Request","host":"%s","path":"%s",'
    b'"request_id":"%s","status":%d,"service":"%s","target":"%s","duration":%d,"method":"%s",'
    b'"resp_content_length":%d,"user_agent":"%s","proto":"%s","query":"%s"%s,%s}\n'
)
_DURATION = b'"duration":'
_AFTER_DURATION = b',"method":"'
_REPLAYED = b'{"time":"%s",%s%d%s%s}\n'
_KEPT_START = b'{"time":"",'


class _KeptLine:
    """Stands in for the log to catch one line, with an empty time."""

    line = b""

    def timestamp(self, now: float) -> bytes:
        return b""

    def write_buffered(self, line: bytes) -> None:
        self.line = line
