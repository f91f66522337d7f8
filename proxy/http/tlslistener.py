"""The HTTPS listener: each connection's ClientHello is looked at before TLS starts.

The SNI callback of a TLS library is synchronous, so it cannot wait for a
certificate that does not exist yet, and it does not see the protocols the
client offers. Peeking at the ClientHello (MSG_PEEK: the bytes stay in the
socket for the handshake to read) tells the proxy both first: a new on-demand
host gets its certificate while that client waits, and an ACME CA validating
TLS-ALPN-01 (ALPN `acme-tls/1`) gets the challenge certificate. Everything else
goes straight on to the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

ACME_TLS_ALPN = "acme-tls/1"  # the only protocol a CA validating TLS-ALPN-01 offers (RFC 8737)

_TLS_HANDSHAKE_RECORD = 0x16
_CLIENT_HELLO = 1
_SERVER_NAME_EXTENSION = 0
_ALPN_EXTENSION = 16
_ACME_TLS_ALPN = ACME_TLS_ALPN.encode()
_MAX_RECORD = 16384 + 5
_PEEK_RETRY = 0.01  # the ClientHello came in pieces: look again this much later, then twice as late...
_PEEK_RETRY_MAX = 0.5
_ACCEPT_PAUSE = 1.0  # after accept() failed for lack of resources
_ACCEPT_BATCH = 64
ON_DEMAND_WAIT = 120.0  # longest a handshake waits for an on-demand certificate (an ACME order)


class HandshakeGate(Protocol):
    """What the listener asks before each handshake."""

    context: ssl.SSLContext

    def prepare(self, server_name: str) -> Awaitable[None] | None:
        """Something to wait for before the handshake for `server_name`, or None to go on at once."""

    def challenge_context(self, server_name: str) -> ssl.SSLContext | None:
        """The TLS-ALPN-01 context of an order in progress for `server_name` (the CA is calling)."""


class ClientHello(NamedTuple):
    server_name: str | None
    alpn: tuple[bytes, ...]


class _Incomplete:
    """The peeked bytes end before the ClientHello does."""


INCOMPLETE = _Incomplete()
_NOT_TLS = ClientHello(None, ())


def read_client_hello(data: bytes) -> ClientHello | _Incomplete:
    """The server name (SNI) and offered protocols (ALPN) of a TLS ClientHello record.

    Anything that is not a well-formed ClientHello reads as one without either: the
    handshake itself then fails it with the proper alert.
    """
    if not data or data[0] != _TLS_HANDSHAKE_RECORD:
        return _NOT_TLS
    if len(data) < 5:
        return INCOMPLETE
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return INCOMPLETE
    try:
        return _read_extensions(data, end)
    except (IndexError, UnicodeDecodeError):
        return _NOT_TLS


def _read_extensions(data: bytes, end: int) -> ClientHello:
    if data[5] != _CLIENT_HELLO:
        return _NOT_TLS
    pos = 9 + 2 + 32  # record head, handshake head, legacy version, random
    pos += 1 + data[pos]  # session id
    pos += 2 + int.from_bytes(data[pos : pos + 2], "big")  # cipher suites
    pos += 1 + data[pos]  # compression methods
    extensions_end = min(end, pos + 2 + int.from_bytes(data[pos : pos + 2], "big"))
    pos += 2
    name = None
    alpn: list[bytes] = []
    while pos + 4 <= extensions_end:
        kind = int.from_bytes(data[pos : pos + 2], "big")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if kind == _SERVER_NAME_EXTENSION and body[2] == 0:
            # server_name_list: length, then (type 0 = host_name, length, name)
            name = body[5 : 5 + int.from_bytes(body[3:5], "big")].decode("ascii").lower() or None
        elif kind == _ALPN_EXTENSION:
            # protocol_name_list: length, then (length, name)...
            at = 2
            while at < len(body):
                alpn.append(body[at + 1 : at + 1 + body[at]])
                at += 1 + body[at]
    return ClientHello(name, tuple(alpn))


class TlsListener:
    """Accepts TCP connections and starts TLS on each once its ClientHello has been seen."""

    def __init__(
        self,
        sock: socket.socket,
        gate: HandshakeGate,
        protocol_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.gate = gate
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.waiting: set[_WaitingHello] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def close(self) -> None:
        """Stop accepting; connections not yet in their handshake are dropped."""
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        for waiting in list(self.waiting):
            waiting.drop()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                # Out of descriptors or memory: the pending connection keeps the socket readable, so
                # stop watching it for a while instead of spinning (as asyncio's own servers do).
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(_ACCEPT_PAUSE, self._watch)
                return
            conn.setblocking(False)
            self.waiting.add(_WaitingHello(self, conn))

    def _watch(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def start_handshake(self, conn: socket.socket, context: ssl.SSLContext) -> None:
        task = self.loop.create_task(self._handshake(conn, context))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handshake(self, conn: socket.socket, context: ssl.SSLContext) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.protocol_factory, conn, ssl=context, ssl_handshake_timeout=self.handshake_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()  # a failed handshake (unknown name, garbage, timeout) ends only this connection


class _WaitingHello:
    """One accepted connection whose ClientHello has not been seen yet."""

    __slots__ = ("conn", "deadline", "listener", "retry", "retry_delay")

    def __init__(self, listener: TlsListener, conn: socket.socket) -> None:
        self.listener = listener
        self.conn = conn
        self.retry: asyncio.TimerHandle | None = None
        self.retry_delay = _PEEK_RETRY
        # The ClientHello and the handshake share the handshake's time limit.
        self.deadline = listener.loop.call_later(listener.handshake_timeout, self.drop)
        listener.loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        loop = self.listener.loop
        try:
            data = self.conn.recv(_MAX_RECORD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop()
            return
        if not data:
            self.drop()
            return
        hello = read_client_hello(data)
        loop.remove_reader(self.conn.fileno())
        if hello is INCOMPLETE:
            # Unread bytes keep the socket readable: wait instead of spinning, longer each time, so a
            # client trickling its hello (or stopping midway) costs next to nothing until the deadline.
            self.retry = loop.call_later(self.retry_delay, self._watch)
            self.retry_delay = min(self.retry_delay * 2, _PEEK_RETRY_MAX)
            return
        gate = self.listener.gate
        name = hello.server_name
        if name and _ACME_TLS_ALPN in hello.alpn:
            challenge = gate.challenge_context(name)
            if challenge is not None:
                self._go_on(challenge)
                return
        waiting = gate.prepare(name) if name else None
        if waiting is None:
            self._go_on()
        else:
            self.deadline.cancel()
            self.deadline = loop.call_later(ON_DEMAND_WAIT, self.drop)
            task = loop.create_task(self._after(waiting))
            self.listener.tasks.add(task)
            task.add_done_callback(self.listener.tasks.discard)

    def _watch(self) -> None:
        self.retry = None
        self.listener.loop.add_reader(self.conn.fileno(), self._readable)

    async def _after(self, waiting: Awaitable[None]) -> None:
        with contextlib.suppress(Exception):
            await waiting  # failures were logged where they happened; the handshake decides
        if self in self.listener.waiting:
            self._go_on()

    def _go_on(self, context: ssl.SSLContext | None = None) -> None:
        self.deadline.cancel()
        self.listener.waiting.discard(self)
        self.listener.start_handshake(self.conn, context or self.listener.gate.context)

    def drop(self) -> None:
        self.deadline.cancel()
        if self.retry is not None:
            self.retry.cancel()
        self.listener.waiting.discard(self)
        if self.conn.fileno() >= 0:
            self.listener.loop.remove_reader(self.conn.fileno())
            with contextlib.suppress(OSError):
                self.conn.recv(_MAX_RECORD)  # unread bytes would make the close a reset
            self.conn.close()
