"""The HTTP/1.1 listener: connection bookkeeping, timeouts and graceful shutdown.

Timeouts are not timers per request: each connection carries one deadline
(an attribute), and a sweep ten times a second handles the expired ones. A
request costs one clock read instead of creating and cancelling a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import socket
from dataclasses import dataclass
from typing import Protocol

from proxy.http.accesslog import AccessLog, EngineLog
from proxy.http.client import ClientConnection
from proxy.http.h2c import CleartextProtocolChooser
from proxy.http.http2 import Http2Connection
from proxy.http.replay import Replay, Replays
from proxy.http.request import Dispatcher, Request
from proxy.http.responses import error_response, page_response
from proxy.http.tlslistener import HandshakeGate, TlsListener

SWEEP_INTERVAL = 0.1
BACKLOG = 4096
_LAST_HEX_DIGITS = tuple(b"%03x" % low for low in range(4096))  # of a request id's counter


class RequestObserver(Protocol):
    """Told about every finished request (metrics)."""

    def observe(self, request: Request) -> None: ...


@dataclass(frozen=True)
class HttpLimits:
    """Protections against slow or oversized requests."""

    header_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_url_bytes: int = 8 * 1024
    max_head_bytes: int = 64 * 1024
    max_body_bytes: int = 0  # 0: no limit (pythrust's MAX_REQUEST_BODY)
    write_timeout: float = 0.0  # 0: none; else how long a client may take no response bytes


class HttpServer:
    """Accepts HTTP/1.1 connections and serves them through a dispatcher."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        log: EngineLog,
        limits: HttpLimits | None = None,
        metrics: RequestObserver | None = None,
        log_requests: bool = True,
        error_pages: dict[int, bytes] | None = None,
        replay_answers: bool = False,
    ) -> None:
        """`replay_answers`: keep answers made from memory for repeated requests (proxy/http/replay.py;
        for dispatchers whose pools answer themselves, and not with metrics, which need each request)."""
        limits = limits or HttpLimits()
        self.loop = asyncio.get_running_loop()
        self.dispatcher = dispatcher
        self.log = log
        self.access_log = AccessLog(log)
        self.metrics = metrics
        # Called once per finished request: straight to the access log unless metrics are on.
        if not log_requests:
            self.log_request = _no_log if metrics is None else self._observe
        else:
            self.log_request = self.access_log.write if metrics is None else self._log_and_observe
        # For a request answered from a kept answer (no metrics then: see `replays`).
        self.log_replayed = self.access_log.write_replayed if log_requests else _no_log_replayed
        self.error_pages = error_pages or {}
        # One table per scheme: a kept answer is only replayed on the kind of listener that made it.
        self.replays: dict[bytes, Replays] = {}
        if replay_answers and metrics is None:
            cut = self.access_log.fixed_fields
            self.replays = {b"http": Replays(cut), b"https": Replays(cut)}
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.max_url_bytes = limits.max_url_bytes
        self.max_head_bytes = limits.max_head_bytes
        self.max_body_bytes = limits.max_body_bytes
        self.write_timeout = limits.write_timeout
        self.connections: set[ClientConnection | Http2Connection] = set()
        self.servers: list[asyncio.Server | TlsListener] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Future[None] | None = None
        prefix = os.urandom(10).hex()
        self._request_id_prefix = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[12:15]}-a{prefix[15:18]}-".encode()
        self._request_ids = itertools.count()
        self._request_id_base = b""

    def new_request_id(self) -> bytes:
        """A UUID-shaped id, unique per process: random prefix plus a 12-hex-digit counter (no syscall).

        The counter's last three digits come from a table; the rest is formatted once per 4096 ids."""
        count = next(self._request_ids)
        low = count & 0xFFF
        if not low:
            self._request_id_base = b"%s%09x" % (self._request_id_prefix, count >> 12)
        return self._request_id_base + _LAST_HEX_DIGITS[low]

    def _log_and_observe(self, client: ClientConnection, request: Request) -> None:
        self.access_log.write(client, request)
        self.metrics.observe(request)

    def _observe(self, client: ClientConnection, request: Request) -> None:
        self.metrics.observe(request)

    def error_response(self, status: int, head_only: bool, pages: dict[int, bytes] | None = None) -> bytes:
        """The response for an error the proxy answers itself: the service's page (`pages`, from
        `Request.pages`) or the operator's one if given, else the built-in one."""
        page = pages.get(status) if pages else None
        if page is not None:
            return page_response(status, page, head_only, b"text/html; charset=utf-8")  # checked UTF-8
        page = self.error_pages.get(status)
        if page is not None:
            return page_response(status, page, head_only)
        return error_response(status, head_only)

    async def listen(
        self,
        host: str | None,
        port: int,
        tls: HandshakeGate | None = None,
        report_port: int | None = None,
        h2c: bool = False,
    ) -> asyncio.Server | TlsListener:
        """Start accepting on host:port (all addresses when host is None); see `serve`."""
        return await self.serve(listening_socket(host, port), tls, report_port, h2c)

    async def serve(
        self,
        sock: socket.socket,
        tls: HandshakeGate | None = None,
        report_port: int | None = None,
        h2c: bool = False,
    ) -> asyncio.Server | TlsListener:
        """Start accepting on a listening socket (one this process bound, or one inherited from the control
        process, which every worker accepts on), over TLS when given a gate.

        `report_port` is the port named in access logs (the configured one when the socket's is 0). With
        `h2c`, a plain listener also takes HTTP/2 with prior knowledge.
        """
        logged_port = report_port or sock.getsockname()[1]
        if tls is not None:
            # A TLS handshake is the first part of receiving a request: same time limit as the head.
            server = TlsListener(
                sock, tls, lambda: ClientConnection(self, b"https", logged_port), self.header_timeout
            )
        else:
            # Chosen once, not per connection: h2c's chooser steps aside after the first bytes.
            if h2c:
                protocol = functools.partial(CleartextProtocolChooser, self, logged_port)
            else:
                protocol = functools.partial(ClientConnection, self, b"http", logged_port)
            server = await self.loop.create_server(protocol, sock=sock, backlog=BACKLOG)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        return server

    def _sweep(self) -> None:
        now = self.loop.time()
        expired = [c for c in self.connections if c.deadline and c.deadline <= now]
        for client in expired:
            client.deadline_expired()
        self.log.flush()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let requests in progress finish within `grace`, then cut the rest.

        Idle connections close at once (after their buffered output is sent);
        busy ones close when their response is done; WebSocket tunnels are not
        waited for.
        """
        for server in self.servers:
            server.close()
        self._all_closed = self.loop.create_future()
        for client in list(self.connections):
            client.begin_shutdown()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed, grace)
        for client in list(self.connections):
            client.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.log.flush()

    def connection_closed(self, client: ClientConnection | Http2Connection) -> None:
        self.connections.discard(client)
        if self._all_closed is not None and not self.connections and not self._all_closed.done():
            self._all_closed.set_result(None)


def listening_socket(host: str | None, port: int) -> socket.socket:
    """A listening TCP socket on host:port; with no host, on every address (IPv6 and IPv4 when possible)."""
    if host is None:
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=BACKLOG
            )
        return socket.create_server(("", port), backlog=BACKLOG)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def _no_log(client: object, request: Request) -> None:
    """`log_request` with access logging off."""


def _no_log_replayed(client: object, replay: Replay, started_at: float) -> None:
    """`log_replayed` with access logging off."""
