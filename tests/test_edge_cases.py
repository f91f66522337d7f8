"""Exchanges where client, proxy and target could fall out of step: each must end cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import ProxyProcess, raw_request

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


async def raw_target(handler: Handler) -> tuple[asyncio.Server, int]:
    """A target speaking raw HTTP: answers /up itself, hands every other request head to `handler`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /up "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    await writer.drain()
                    continue
                await handler(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def deploy_raw(proxy: ProxyProcess, handler: Handler) -> asyncio.Server:
    server, port = await raw_target(handler)
    result = await proxy.deploy("web", f"127.0.0.1:{port}")
    assert result.status == 0, result.stderr
    return server


async def test_upgrade_request_with_a_body_is_refused(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    response = await raw_request(
        proxy.port,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Upgrade: foo\r\nConnection: Upgrade\r\n\r\nGET ",
    )
    assert response.startswith(b"HTTP/1.1 400 ")


async def test_early_response_to_a_large_upload_leaves_the_connection_usable(proxy):
    async def early(reader, writer, head):
        length = 0
        if head.startswith(b"POST"):
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        await writer.drain()
        if length:
            await asyncio.sleep(0.5)  # the target reads the body late: the proxy's buffer to it fills up
            await reader.readexactly(length)

    server = await deploy_raw(proxy, early)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    body = b"x" * 3_000_000
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(5) == b"early"
    writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    server.close()
    assert rest.startswith(b"HTTP/1.1 200"), "the client connection must be read again after the response"


async def test_stale_pooled_connection_is_retried_with_an_empty_chunked_body(proxy):
    seen: list[bytes] = []

    async def close_second(reader, writer, head):
        seen.append(head)
        if len(seen) == 2:
            writer.transport.abort()  # a keep-alive connection the target dropped
            raise ConnectionError
        if b"chunked" in head:
            assert await reader.readuntil(b"0\r\n\r\n") == b"0\r\n\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await deploy_raw(proxy, close_second)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"ok"), 5)
    writer.write(
        b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )
    response = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    server.close()
    assert response.startswith(b"HTTP/1.1 502"), (
        "without the body the request cannot be replayed: 502, not a hang"
    )


async def test_bytes_after_the_response_are_not_relayed(proxy):
    async def splitting(reader, writer, head):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
        )
        await writer.drain()

    server = await deploy_raw(proxy, splitting)
    response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.close()
    assert b"evil" not in response


async def test_malformed_pipelined_request_is_answered_after_the_valid_one(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    pipelined = b"GET /slow?s=0.3 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n"
    response = await raw_request(proxy.port, pipelined)
    assert response.startswith(b"HTTP/1.1 200")
    assert b"slow from blue" in response
    assert b"HTTP/1.1 400 " in response


async def test_request_trailers_are_not_taken_for_headers(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    response = await raw_request(
        proxy.port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil\r\nX-Checksum: 1\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"hello")


async def test_http10_chunked_request_is_refused(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    response = await raw_request(
        proxy.port, b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 400")


async def test_deploy_succeeds_and_drains_even_if_the_state_cannot_be_saved(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    state_dir = proxy.workdir / "config" / "pyproxy"
    (
        state_dir / f".pyproxy.state.{proxy.process.pid}.tmp"
    ).mkdir()  # the next save cannot write its temp file
    result = await proxy.deploy("web", green.address)
    assert result.status == 0, result.stderr
    assert "Drained" in result.stdout
    await proxy.wait_for_log("Could not save state")


@pytest.mark.parametrize(
    ("size", "buffered"),
    [
        pytest.param(200_000, True, id="response-done-but-still-buffered"),
        pytest.param(3_000_000, False, id="response-in-flight"),
    ],
)
async def test_shutdown_finishes_sending_a_response_to_a_slow_client(proxy, size, buffered):
    async def big(reader, writer, head):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size)
        await writer.drain()

    server = await deploy_raw(proxy, big)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    if buffered:
        await proxy.wait_for_log("Request", path="/big")  # the proxy holds the rest; the client is slow
    proxy.process.send_signal(signal.SIGTERM)
    body = await asyncio.wait_for(reader.read(-1), 15)
    writer.close()
    server.close()
    assert len(body) == size
    assert await asyncio.wait_for(proxy.process.wait(), 15) == 0


async def test_the_status_of_a_head_response_is_logged_as_sent(proxy):
    async def missing(reader, writer, head):
        status = b"200 OK" if head.startswith(b"GET /up") else b"404 Not Found"
        writer.write(b"HTTP/1.1 %s\r\nContent-Length: 9\r\n\r\n" % status)
        if head.startswith(b"GET"):
            writer.write(b"not found")
        await writer.drain()

    server = await deploy_raw(proxy, missing)
    response = await raw_request(proxy.port, b"HEAD /gone HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    server.close()
    assert response.startswith(b"HTTP/1.1 404")
    logged = await proxy.wait_for_log("Request", method="HEAD")
    assert logged["status"] == 404, "the access log (and metrics) must say what the client got"
