"""The engine with one buffering service, for the buffering and body-timeout tests.

`start_engine` runs an `HttpServer` in the test's own loop: plain HTTP (also
cleartext HTTP/2 with prior knowledge) and, given a certificate, HTTPS with
ALPN h2, every request going to one target's `UpstreamPool` with a
`BufferPolicy`, as a service deployed with --buffer-requests/--buffer-responses
is routed by the dispatcher. Run as a script (`python -m tests.buffer_server`),
the same engine serves in a process of its own until its stdin closes and
prints its ports as the first line on stdout, then its JSON log: for tests
that measure or constrain the proxy's process (RSS, RLIMIT_FSIZE, $TMPDIR).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from dataclasses import dataclass

from proxy.http.buffering import BufferPolicy
from proxy.http.request import Request
from proxy.http.server import HttpLimits, HttpServer
from proxy.http.upstream import UpstreamPool
from proxy.log import JsonLog


class OneService:
    """A dispatcher with one service: its target, buffering policy and error pages."""

    def __init__(
        self, pool: UpstreamPool, policy: BufferPolicy | None, pages: dict[int, bytes] | None = None
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.pages = pages
        self.target_timeout = 30.0

    def route(self, request: Request) -> int:
        request.pool = self.pool
        request.service = b"web"
        request.path = request.url
        request.forward_headers = True
        request.target_timeout = self.target_timeout
        request.buffering = self.policy
        request.pages = self.pages
        return 0


class _Gate:
    """TLS with one certificate, ALPN h2 and http/1.1 (tlslistener.HandshakeGate)."""

    def __init__(self, cert: str, key: str) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2", "http/1.1"])

    def prepare(self, server_name: str) -> None:
        return None

    def challenge_context(self, server_name: str) -> None:
        return None


@dataclass
class Engine:
    server: HttpServer
    service: OneService
    port: int
    tls_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.shutdown(1.0)


async def start_engine(
    target: str,
    policy: BufferPolicy | None,
    log: JsonLog,
    header_timeout: float = 30.0,
    pages: dict[int, bytes] | None = None,
    tls: tuple[str, str] | None = None,
) -> Engine:
    host, _, port = target.rpartition(":")
    service = OneService(UpstreamPool(host, int(port)), policy, pages)
    server = HttpServer(service, log, HttpLimits(header_timeout=header_timeout))
    listening = await server.listen("127.0.0.1", 0, h2c=True)
    engine = Engine(server, service, listening.sockets[0].getsockname()[1])
    if tls is not None:
        secure = await server.listen("127.0.0.1", 0, tls=_Gate(*tls))
        engine.tls_port = secure.sockets[0].getsockname()[1]
    return engine


async def _serve(args: argparse.Namespace) -> None:
    policy = BufferPolicy(
        requests=args.buffer_requests,
        responses=args.buffer_responses,
        memory=args.memory,
        max_request_body=args.max_request_body,
        max_response_body=args.max_response_body,
    )
    log = JsonLog(fd=sys.stdout.fileno())
    engine = await start_engine(args.target, policy, log, args.header_timeout)
    os.write(sys.stdout.fileno(), json.dumps({"port": engine.port, "pid": os.getpid()}).encode() + b"\n")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)  # until the test closes our stdin
    await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--buffer-requests", action="store_true")
    parser.add_argument("--buffer-responses", action="store_true")
    parser.add_argument("--memory", type=int, default=1024 * 1024)
    parser.add_argument("--max-request-body", type=int, default=0)
    parser.add_argument("--max-response-body", type=int, default=0)
    parser.add_argument("--header-timeout", type=float, default=30.0)
    args = parser.parse_args()
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    run(_serve(args))


if __name__ == "__main__":
    main()
