"""Turning a client's request into the HTTP/1.1 head the target receives.

Shared by the HTTP/1.1 and HTTP/2 client sides, so both apply the same
forwarding rules: hop-by-hop headers dropped, `X-Forwarded-*` rebuilt,
`X-Request-ID` kept or generated, `X-Request-Start` added.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.http import headers as h
from proxy.http.accesslog import AccessLog

if TYPE_CHECKING:
    from proxy.http.contracts import ServerContext
    from proxy.http.request import Request


class Reject(Exception):
    """Raised while reading a request head to answer it with `status` (and, on HTTP/1.1, close)."""

    def __init__(self, status: int) -> None:
        self.status = status


class RequestForwarding:
    """Mixin for a client connection; it provides `server`, `scheme`, `last_host` and
    `last_host_line`, and calls `_identify_client` when the connection is made."""

    __slots__ = ()

    server: ServerContext
    client_ip: bytes
    scheme: bytes
    forwarded_plain: bytes
    log_fields: bytes
    last_host: bytes | None
    last_host_line: bytes

    def _special_header(self, request: Request, kind: int, name: bytes, value: bytes) -> None:
        """Note a header from `headers.REQUEST_SPECIAL`; forward it only if the rules say so."""
        if kind == h.HOST:
            if request.host:
                raise Reject(400)
            request.host = value
        elif kind == h.USER_AGENT:
            request.user_agent = value
        elif kind == h.REQUEST_ID:
            request.request_id = value
        elif kind == h.REQUEST_START:
            request.request_start = True
        elif kind == h.CONTENT_LENGTH:
            request.content_length = value
        elif kind == h.CONNECTION:
            previous = request.connection
            request.connection = value if previous is None else previous + b"," + value
            return
        elif kind == h.UPGRADE:
            request.upgrade = value
            return
        elif kind == h.PROXY_CONNECTION:
            request.proxy_connection = True
            return
        elif kind == h.TRANSFER_ENCODING:
            if value.strip().lower() != b"chunked":
                raise Reject(501)
            request.chunked = True
            return
        elif kind == h.FORWARDED_FOR:
            request.xff = value if request.xff is None else request.xff + b", " + value
            return
        elif kind == h.FORWARDED_PROTO:
            request.xfp = request.xfp or value
            return
        elif kind == h.FORWARDED_HOST:
            request.xfh = request.xfh or value
            return
        elif kind == h.KAMAL_TARGET:
            # Replaced by the target the request goes to (kept in front of it with forward_headers).
            prior = request.kamal_target
            request.kamal_target = value if prior is None else prior + b", " + value
            return
        else:
            return
        request.headers.append(b"%s: %s\r\n" % (name, value))

    def _upstream_head(self, request: Request) -> bytes:
        # request.headers[0] was reserved for the request line: the head is one join.
        headers = request.headers
        headers[0] = b"%s %s %s\r\n" % (
            request.method,
            request.path,
            b"HTTP/1.0" if request.http10 else b"HTTP/1.1",
        )
        if request.forward_headers and (request.xff or request.xfp or request.xfh):
            xff = request.xff + b", " + self.client_ip if request.xff else self.client_ip
            headers.append(
                b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
                % (xff, request.xfp or self.scheme, request.xfh or request.host)
            )
        else:
            host = request.host
            if host != self.last_host:  # a connection's requests nearly always share one Host
                self.last_host = host
                self.last_host_line = b"X-Forwarded-Host: " + host + b"\r\n"
            headers.append(self.forwarded_plain)
            headers.append(self.last_host_line)
        if request.request_id is None:
            request.request_id = self.server.new_request_id()
            headers.append(b"X-Request-ID: %s\r\n" % request.request_id)
        if not request.request_start:
            headers.append(b"X-Request-Start: t=%d\r\n" % int(request.started_at * 1000))
        if request.upgrade is not None:
            headers.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % request.upgrade)
        elif request.http10:
            headers.append(b"Connection: keep-alive\r\n")
        if request.chunked:
            headers.append(b"Transfer-Encoding: chunked\r\n")
        headers.append(b"\r\n")
        return b"".join(headers)

    def _identify_client(self, transport: asyncio.BaseTransport, port: int) -> None:
        """Note who the client is, once per connection: its address for X-Forwarded-For, and the
        fields every access-log line of the connection shares."""
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        # A dual-stack listener names IPv4 clients as IPv4-mapped IPv6 addresses; Go (kamal-proxy) and
        # every app behind it expect the IPv4 address itself.
        self.client_ip = (ip[7:] if ip.startswith("::ffff:") and "." in ip else ip).encode()
        self._note_connection_lines(port)

    def _note_connection_lines(self, port: int) -> None:
        """The X-Forwarded-For/-Proto lines and the access-log fields, from the client's address."""
        self.forwarded_plain = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (
            self.client_ip,
            self.scheme,
        )
        self.log_fields = AccessLog.connection_fields(port, self.client_ip, self.scheme)
