"""Targets whose response head lines end in a bare LF (busybox httpd's CGI): relayed, with CRLF.

RFC 9112 2.2 lets a recipient take a bare LF for a line end, and kamal-proxy,
nginx and curl do for responses. Requests from clients stay strict.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from proxy.log import JsonLog
from tests.buffer_server import start_engine
from tests.conftest import raw_request
from tests.h2client import H2Client
from tests.raw_target import read_response

LF_HEAD = b"HTTP/1.1 200 OK\nContent-Type: text/plain\nX-Lf: yes\nContent-Length: 5\n\n"


def answering(*responses: bytes):
    """A target `respond` giving these responses in turn (the last one again after them)."""
    left = list(responses)

    async def respond(target, got, reader, writer) -> None:
        writer.write(left.pop(0) if len(left) > 1 else left[0])
        if got.head.startswith(b"GET /close"):
            await writer.drain()
            writer.close()

    return respond


@pytest.fixture
async def web(proxy, target):
    result = await proxy.deploy("web", target.address)
    assert result.status == 0, result.stderr
    return proxy


def head_lines(head: bytes) -> list[bytes]:
    assert b"\n" not in head.replace(b"\r\n", b""), f"a bare LF reached the client: {head!r}"
    return head.split(b"\r\n")


async def test_bare_lf_heads_are_relayed_with_crlf_and_the_target_connection_is_reused(web, target):
    target.respond = answering(LF_HEAD + b"hello", b"HTTP/1.1 200 OK\nContent-Length: 6\n\nagain!")
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await read_response(reader)
    writer.write(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    second = await read_response(reader)
    writer.close()
    lines = head_lines(first[0])
    assert lines[0] == b"HTTP/1.1 200 OK" and b"X-Lf: yes" in lines and first[1] == b"hello"
    assert head_lines(second[0])[0] == b"HTTP/1.1 200 OK" and second[1] == b"again!"
    assert [r.connection for r in target.requests] == [target.requests[0].connection] * 2, (
        "the bare-LF target's connection was kept"
    )
    line = await web.wait_for_log("Request", path="/one")
    assert line["status"] == 200 and line["resp_content_length"] == 5


@pytest.mark.parametrize(
    ("response", "body"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\n\nhello from cgi\n",
            b"hello from cgi\n",
            id="busybox",
        ),
        pytest.param(
            b"HTTP/1.1 201 Created\nTransfer-Encoding: chunked\n\n5\r\nhello\r\n0\r\n\r\n",
            b"hello",
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 103 Early Hints\nLink: </a.css>\n\nHTTP/1.1 200 OK\nContent-Length: 2\n\nok",
            b"ok",
            id="interim",
        ),
        pytest.param(b"HTTP/1.0 404 Not Found\r\nX-A: 1\nX-B: 2\r\n\r\nnope", b"nope", id="mixed-http10"),
    ],
)
async def test_bare_lf_responses_keep_their_status_and_body(web, target, response, body):
    target.respond = answering(response)
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
    head, received = await read_response(reader)
    if head.startswith(b"HTTP/1.1 103"):
        head_lines(head)
        head, received = await read_response(reader)
    writer.close()
    status = int(response.rsplit(b"HTTP/1.", 1)[1][2:5])
    assert head_lines(head)[0].startswith(b"HTTP/1.1 %d " % status) and received == body


async def test_a_head_with_a_bare_cr_is_still_refused(web, target):
    target.respond = answering(b"HTTP/1.1 200 OK\nX-Bad: a\rb\nContent-Length: 1\n\nx")
    response = await raw_request(web.port, b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 502 ")


async def test_requests_with_bare_lf_still_get_400(web, target):
    response = await raw_request(web.port, b"GET / HTTP/1.1\nHost: a\n\n")
    assert response.startswith(b"HTTP/1.1 400 ")
    response = await raw_request(web.port, b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400 ")
    assert target.requests == []


async def test_an_http2_client_gets_a_bare_lf_response(target, tmp_path):
    target.respond = answering(LF_HEAD + b"hello")
    log = JsonLog(fd=os.open(tmp_path / "engine.log", os.O_WRONLY | os.O_CREAT))
    engine = await start_engine(target.address, None, log)
    client = await H2Client.connect(engine.port, "app.test", None)
    try:
        response = await client.get("/lf")
    finally:
        await client.close()
        await engine.stop()
        os.close(log.fd)
    assert response.status == 200 and response.body == b"hello"
    assert response.headers[b"x-lf"] == b"yes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
async def test_busybox_httpd_cgi_is_relayed(proxy, tmp_path: Path):
    cgi = tmp_path / "www" / "cgi-bin"
    cgi.mkdir(parents=True)
    (cgi / "hi").write_text('#!/bin/sh\necho "Content-Type: text/plain"\necho ""\necho "hello from cgi"\n')
    (cgi / "hi").chmod(0o755)
    (tmp_path / "www" / "up").write_text("OK")
    port = free_port()
    httpd = subprocess.Popen(
        ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(tmp_path / "www")]
    )
    try:
        result = await proxy.deploy("cgi", f"127.0.0.1:{port}")
        assert result.status == 0, result.stderr
        response = await raw_request(proxy.port, b"GET /cgi-bin/hi HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        httpd.terminate()
        httpd.wait(10)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head_lines(head)[0] == b"HTTP/1.1 200 OK" and body == b"hello from cgi\n"
