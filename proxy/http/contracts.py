"""What client connections read from the server that accepted them, as a Protocol.

`server.HttpServer` is what gives it; the HTTP/1.1 connection, the HTTP/2
connection, the h2c chooser and the forwarding rules are typed against this
contract instead, so that they need not import the server (which imports
them). The contracts around a request itself are in proxy/http/request.py.
Typing only: nothing is looked up through it at run time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.http.accesslog import EngineLog
    from proxy.http.replay import Replay, Replays
    from proxy.http.request import Dispatcher, Downstream, Request


class ServedConnection(Protocol):
    """A client connection as the server keeps it: swept for its deadline, and closed at shutdown."""

    deadline: float  # loop time; 0.0: none

    def deadline_expired(self) -> None: ...

    def begin_shutdown(self) -> None: ...

    def abort(self) -> None: ...


class ServerContext(Protocol):
    """The settings and shared state a client connection reads from its server, and what it tells it."""

    loop: asyncio.AbstractEventLoop
    dispatcher: Dispatcher
    log: EngineLog  # handed on to what writes errors of its own (buffering.py)
    # Called once per finished request, and per request answered from a kept answer (replay.py).
    log_request: Callable[[Downstream, Request], None]
    log_replayed: Callable[[Downstream, Replay, float], None]
    replays: dict[bytes, Replays]  # the kept answers, by listener scheme; empty when none are kept

    # Limits (seconds, bytes; a 0 write timeout or body limit is none).
    header_timeout: float
    idle_timeout: float
    write_timeout: float
    max_url_bytes: int
    max_head_bytes: int
    max_body_bytes: int

    connections: set[ServedConnection]  # a connection adds itself once it is made

    def connection_closed(self, client: ServedConnection) -> None: ...

    def new_request_id(self) -> bytes: ...

    def error_response(self, status: int, head_only: bool, pages: dict[int, bytes] | None = None) -> bytes:
        """The response for an error the proxy answers itself."""
