"""An idle TLS connection holds little memory after a large response, as after a small one.

uvloop encrypts what is written to a TLS transport into OpenSSL's output buffer, which keeps its largest
size for as long as the connection lives: a response relayed in large writes left each idle connection
holding about 280 KB (nginx: 14 KB). pyproxy writes to TLS clients a record at a time (tlswrites.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import trustme

from proxy.http.client import REST_SECONDS
from proxy.http.server import SWEEP_INTERVAL
from tests.test_idle_memory import resident_bytes
from tests.test_tls import client_context, write_pair

BODY = b"x" * (1024 * 1024)
CONNECTIONS = 300
WARMUP = 50  # opened, used and closed before the first reading: one-off costs are not the connections'
BATCH = 50  # connections downloading at once
GROWTH_LIMIT = CONNECTIONS * 100_000  # bytes: a small response's connection holds about 27 KB
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def large_upstream() -> AsyncIterator[str]:
    """A keep-alive target answering every request with 1 MiB (its health check with 2 bytes)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b"OK" if head.startswith(b"GET /up ") else BODY
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                writer.write(body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def one_large_response(port: int, ca: trustme.CA) -> Connection:
    """An HTTPS/1.1 keep-alive connection that made one GET and read its whole 1 MiB answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(ca), server_hostname="big.test"
    )
    writer.write(b"GET /large HTTP/1.1\r\nHost: big.test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert await reader.readexactly(len(BODY)) == BODY
    return reader, writer


async def open_answered(port: int, ca: trustme.CA, count: int) -> list[Connection]:
    connections: list[Connection] = []
    while len(connections) < count:
        size = min(BATCH, count - len(connections))
        connections += await asyncio.gather(*(one_large_response(port, ca) for _ in range(size)))
    return connections


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.transport.abort()


@pytest.mark.timeout(120)
async def test_idle_tls_connections_after_a_large_response_hold_little_memory(make_proxy, large_upstream):
    ca = trustme.CA()
    proxy = await make_proxy("--idle-timeout=10m")
    cert, key = write_pair(ca, proxy.workdir, "big.test")
    flags = ("--tls", f"--tls-certificate-path={cert}", f"--tls-private-key-path={key}", "--host=big.test")
    assert (await proxy.deploy("big", large_upstream, args=flags)).status == 0
    pid = proxy.process.pid
    settle = REST_SECONDS + 3 * SWEEP_INTERVAL

    close_all(await open_answered(proxy.https_port, ca, WARMUP))
    await asyncio.sleep(settle)
    before = resident_bytes(pid)
    connections = await open_answered(proxy.https_port, ca, CONNECTIONS)
    try:
        await asyncio.sleep(settle)
        grown = resident_bytes(pid) - before
        closed = sum(1 for reader, writer in connections if reader.at_eof() or writer.transport.is_closing())
        assert closed == 0, f"{closed} of the idle connections were closed by the proxy"
    finally:
        close_all(connections)
    assert grown < GROWTH_LIMIT, (
        f"{CONNECTIONS} idle TLS connections, each after a 1 MiB response, grew pyproxy by "
        f"{grown / 1e6:.1f} MB, {grown / CONNECTIONS:,.0f} B each"
    )
