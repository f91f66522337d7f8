"""Malformed and hostile requests: the right 4xx, a closed connection, nothing reaching the target."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import raw_request


@pytest.fixture
async def web(proxy, upstreams):
    result = await proxy.deploy("web", upstreams[0].address)
    assert result.status == 0, result.stderr
    return proxy


async def assert_rejected(port: int, request: bytes, status: int) -> bytes:
    response = await raw_request(port, request)  # returns only once the proxy closed the connection
    assert response.startswith(b"HTTP/1.1 %d " % status), response[:80]
    assert b"Connection: close" in response
    return response


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", id="bad-request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", id="space-in-header-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", id="obsolete-line-folding"),
        pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", id="nul-in-target"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http11-without-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET /\r\n\r\n", id="http09"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-on-plain-port"),
    ],
)
async def test_malformed_requests_get_400_and_close(web, upstreams, request_bytes):
    await assert_rejected(web.port, request_bytes, 400)
    assert upstreams[0].requests == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            id="content-length-and-transfer-encoding",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
            id="differing-content-lengths",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            id="invalid-chunk-size",
        ),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            id="chunk-longer-than-declared",
        ),
    ],
)
async def test_ambiguous_framing_gets_400_and_nothing_is_smuggled(web, upstreams, request_bytes):
    await assert_rejected(web.port, request_bytes, 400)
    assert not [r for r in upstreams[0].requests if r.path == "/smuggled"]


async def test_unknown_transfer_coding_gets_501(web):
    await assert_rejected(web.port, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501)


async def test_oversized_header_section_gets_431(web):
    big = b"X-Big: " + b"a" * 8000 + b"\r\n"
    await assert_rejected(web.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + big * 10 + b"\r\n", 431)


async def test_endless_header_line_gets_431_without_buffering_it_all(web):
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    response = b""
    try:
        for _ in range(200):
            writer.write(b"a" * 16384)
            await writer.drain()
    except ConnectionError:
        pass
    response = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_overlong_uri_gets_414(web):
    await assert_rejected(web.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)


async def test_connect_method_is_refused(web):
    await assert_rejected(web.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405)


async def test_slow_headers_get_408_after_the_header_timeout(make_proxy, upstreams):
    proxy = await make_proxy("--header-timeout=300ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finishes the head
    response = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(make_proxy):
    proxy = await make_proxy("--idle-timeout=300ms")
    reader, _writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(reader.read(-1), 5) == b""


async def test_bad_request_does_not_disturb_other_clients(web):
    good_reader, good_writer = await asyncio.open_connection("127.0.0.1", web.port)
    await assert_rejected(web.port, b"GARBAGE\r\n\r\n", 400)
    good_writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(good_reader.read(-1), 5)
    good_writer.close()
    assert response.startswith(b"HTTP/1.1 200 ")
