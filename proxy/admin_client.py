"""Client side of the admin socket, used by `pyproxy deploy|remove|list|...`.

Standard library only, one HTTP/1.1 request per connection: an admin command starts, sends one
request and exits (Kamal runs one per role per host per deploy), so it must not pay for importing
the server's stack (aiohttp alone took a quarter of a second).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from proxy.paths import program_name, socket_path

_MAX_LINE = 64 * 1024
# How long a command waits for a `run` that is starting (no socket yet, or nobody listening on it): Kamal
# starts the proxy's container and deploys to it moments later, and `run` opens its socket only once its
# workers accept. A command with no proxy at all says so after this long.
STARTING_GRACE = 5.0
_RETRY_EVERY = 0.05


class AdminError(Exception):
    """Something the operator must read: the server's refusal, or why it could not be reached."""


class _Response:
    """The status and body of one answer, read from the socket as it arrives (chunked or not)."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream
        status_line = self._line()
        if not status_line:
            raise AdminError(
                f"pyproxy at {socket_path()} closed the connection without answering (did it stop?)"
            )
        try:
            version, code, *_ = status_line.split(None, 2)
            if not version.startswith(b"HTTP/"):
                raise ValueError(status_line)
            self.status = int(code)
        except ValueError:
            raise AdminError(f"pyproxy at {socket_path()} answered something else than HTTP") from None
        self._chunked = False
        self._length: int | None = None
        while header := self._line():
            name, _, value = header.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"transfer-encoding":
                self._chunked = value.lower() == b"chunked"
            elif name == b"content-length":
                self._length = int(value)

    def _line(self) -> bytes:
        """One line without its CRLF; b"" at the end of the headers or of the stream."""
        return self._stream.readline(_MAX_LINE).rstrip(b"\r\n")

    def parts(self) -> Iterator[bytes]:
        """The body as it comes; a connection closed early just ends it."""
        if self._length is not None and not self._chunked:
            yield self._stream.read(self._length)
        elif not self._chunked:
            yield from iter(lambda: self._stream.read1(_MAX_LINE), b"")
        else:
            while (size_line := self._line()) and (size := int(size_line.split(b";")[0], 16)):
                yield self._stream.read(size)
                self._line()

    def lines(self) -> Iterator[bytes]:
        """The body line by line, each as soon as its newline arrives (a last line without one was cut
        off, and is not given)."""
        pending = b""
        for part in self.parts():
            *complete, pending = (pending + part).split(b"\n")
            yield from complete

    def json(self) -> Any:
        return json.loads(b"".join(self.parts()))


def _send(method: str, path: str, payload: Any = None) -> tuple[socket.socket, _Response]:
    """Open the socket, send one request and read the answer's head. No timeout: a deploy waits for
    health checks and draining, which the server bounds."""
    body = b"" if payload is None else json.dumps(payload).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: pyproxy\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        connection = _connect()
    except OSError as exc:
        raise _unreachable(exc) from None
    try:
        connection.sendall(head.encode() + body)
    except OSError as exc:
        connection.close()
        raise _unreachable(exc) from None
    try:
        with _unreadable_is_an_error():
            return connection, _Response(connection.makefile("rb"))
    except AdminError:
        connection.close()
        raise


def _connect() -> socket.socket:
    """The admin socket, once a `run` that is starting listens on it (within STARTING_GRACE)."""
    deadline = time.monotonic() + STARTING_GRACE
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(str(socket_path()))
        except (FileNotFoundError, ConnectionRefusedError):
            connection.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_EVERY)
        except OSError:
            connection.close()
            raise
        else:
            return connection


def _unreachable(exc: OSError) -> AdminError:
    return AdminError(f"cannot reach pyproxy at {socket_path()} (is `{program_name()} run` running?): {exc}")


def _raise_for_error(response: _Response) -> None:
    if response.status >= 400:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status}"
        raise AdminError(message)


def _request(method: str, path: str, payload: Any = None) -> Any:
    """One request; its JSON answer."""
    connection, response = _send(method, path, payload)
    with connection, _unreadable_is_an_error():
        _raise_for_error(response)
        return response.json()


@contextlib.contextmanager
def _unreadable_is_an_error() -> Iterator[None]:
    """An answer cut short or garbled (pyproxy killed mid-answer, another server on the socket) is one
    line for the operator, not a traceback."""
    try:
        yield
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise _unreadable(exc) from None


def _unreadable(problem: Exception) -> AdminError:
    return AdminError(f"pyproxy at {socket_path()} sent an answer that could not be read: {problem}")


def deploy(
    payload: dict[str, Any], on_progress: Callable[[dict[str, Any]], None], path: str = "/deploy"
) -> None:
    """Send a deploy (or a rollout deploy) and report each progress event until it is done; AdminError if
    it failed."""
    connection, response = _send("POST", path, payload)
    finished = False
    with connection:
        with _unreadable_is_an_error():
            _raise_for_error(response)
        for event in _events(response):
            if "error" in event:
                raise AdminError(event["error"])
            on_progress(event)  # outside the reads: a closed stdout is not a deploy that failed
            finished = event.get("event") == "done"
    if not finished:
        raise AdminError("the deploy ended without a result (did pyproxy stop?)")


def _events(response: _Response) -> Iterator[dict[str, Any]]:
    """The progress events as they arrive; a stream cut short ends (the caller sees no `done`)."""
    lines = response.lines()
    while True:
        try:
            line = next(lines)
        except (StopIteration, OSError):
            return
        except ValueError as exc:  # a chunk size that is not one
            raise _unreadable(exc) from None
        if not line.strip():
            continue
        with _unreadable_is_an_error():
            event = json.loads(line)
            if not isinstance(event, dict):
                raise TypeError(f"not a progress event: {line[:200]!r}")
        yield event


def change(path: str, service: str, **details: Any) -> None:
    """One change to a service: `/remove`, `/pause`, `/stop`, `/resume`, `/rollout/set`, `/rollout/stop`."""
    _request("POST", path, {"service": service, **details})


def list_services() -> list[dict[str, Any]]:
    return _request("GET", "/services")
