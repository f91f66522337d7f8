"""Request bodies that stop arriving: 408 after the header timeout, and the target connection let go.

Without it, a client that sends a head and part of its body holds a
connection to the target, unanswered, for as long as it keeps its socket
open. A pause that is the proxy's own (the target slow to take the body, the
disk behind) is not the client's fault and gets no 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import h2.exceptions
import pytest

from proxy.http.buffering import FILE_PREFIX, BufferPolicy
from proxy.log import JsonLog
from tests.buffer_server import start_engine
from tests.h2client import H2Client
from tests.raw_target import read_body, read_response

HEADER_TIMEOUT = 1.0
MiB = 1024 * 1024


@pytest.fixture
async def web(make_proxy, target):
    proxy = await make_proxy(f"--header-timeout={HEADER_TIMEOUT:g}s")
    result = await proxy.deploy("web", target.address)
    assert result.status == 0, result.stderr
    return proxy


async def stalled(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data` and nothing more; what comes back until the proxy closes, and after how long."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(data)
    try:
        response = await asyncio.wait_for(reader.read(-1), HEADER_TIMEOUT + 10)
    finally:
        writer.close()
    return response, time.monotonic() - started


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfour", id="4-of-5-bytes"),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nab",
            id="chunked-stops-midway",
        ),
    ],
)
async def test_a_body_that_stops_arriving_gets_408_and_the_target_connection_closes(web, target, data):
    response, elapsed = await stalled(web.port, data)
    assert response.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in response
    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 1.5, elapsed
    await asyncio.wait_for(target.closed.wait(), 5)  # the target's connection was let go too
    line = await web.wait_for_log("Request", path="/upload")
    assert line["status"] == 408


async def test_a_body_that_keeps_trickling_in_is_not_cut(web, target):
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
    for byte in b"slow":  # each within the timeout, all of them beyond it
        await asyncio.sleep(HEADER_TIMEOUT * 0.6)
        writer.write(bytes([byte]))
    head, body = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["length"] == 4


async def test_a_target_slow_to_take_the_body_gets_no_408(web, target):
    target.read_body = False

    async def late(target, got, reader, writer) -> None:
        await asyncio.sleep(HEADER_TIMEOUT * 2.5)  # the proxy has stopped reading its client meanwhile
        await read_body(reader, got)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(got.sha256), got.sha256.encode())
        )

    target.respond = late
    body = os.urandom(16 * MiB)  # more than the sockets and the proxy hold
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    head, answer = await read_response(reader, timeout=30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and answer == hashlib.sha256(body).hexdigest().encode()


async def test_a_body_that_stops_after_the_response_started_gets_the_connection_cut(web, target):
    target.read_body = False
    streaming = asyncio.Event()

    async def early(target, got, reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        streaming.set()
        await read_body(reader, got)  # the rest never comes

    target.respond = early
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await streaming.wait()
    writer.write(b"de")  # more body after the response began, then nothing
    rest = await asyncio.wait_for(reader.read(-1), HEADER_TIMEOUT + 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert not rest.endswith(b"0\r\n\r\n"), "the response is cut, not ended as if whole"
    await asyncio.wait_for(target.closed.wait(), 5)


# -- in the engine: with buffering, and HTTP/2 ----------------------------------------------


@pytest.fixture
async def engine_log(tmp_path: Path) -> AsyncIterator[JsonLog]:
    log = JsonLog(fd=os.open(tmp_path / "engine.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    yield log
    os.close(log.fd)


async def test_a_buffered_body_that_stops_arriving_gets_408_and_leaves_no_file(
    target, engine_log, tmp_path, monkeypatch
):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    policy = BufferPolicy(requests=True, memory=64 * 1024)
    engine = await start_engine(target.address, policy, engine_log, header_timeout=0.5)
    try:
        head = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (2 * MiB)
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(head + os.urandom(MiB))
        response = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
    finally:
        await engine.stop()
    assert response.startswith(b"HTTP/1.1 408 ")
    assert target.connections == 0
    async with asyncio.timeout(5):
        while list(tmp_path.glob(FILE_PREFIX + "*")):
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("policy", [None, BufferPolicy(requests=True)], ids=["streamed", "buffered"])
async def test_an_http2_body_that_stops_arriving_gets_408_on_its_stream(target, engine_log, policy):
    engine = await start_engine(target.address, policy, engine_log, header_timeout=0.5)
    client = await H2Client.connect(engine.port, "app.test", None)
    try:
        stream = client.start("/upload", method="POST", headers=[("content-length", "10")], end=False)
        client.conn.send_data(stream, b"abc")
        client.flush()
        response = await client.response(stream)
    finally:
        await client.close()
        await engine.stop()
    assert response.status == 408


async def test_an_http2_upload_to_a_target_slow_to_take_it_gets_no_408(target, engine_log):
    engine = await start_engine(target.address, None, engine_log, header_timeout=0.5)
    target.read_body = False

    async def late(target, got, reader, writer) -> None:
        await asyncio.sleep(1.5)  # the stream's window stays shut meanwhile: the client cannot send
        await read_body(reader, got)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(got.sha256), got.sha256.encode())
        )

    target.respond = late
    body = os.urandom(8 * MiB)
    client = await H2Client.connect(engine.port, "app.test", None)
    try:
        stream = client.start("/upload", method="POST", end=False)
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            await asyncio.wait_for(client.send_body(stream, body), 20)
        response = await client.response(stream, timeout=20)
    finally:
        await client.close()
        await engine.stop()
    assert response.status == 200 and response.body == hashlib.sha256(body).hexdigest().encode()
