"""Requests through a real `pyproxy run` to real upstream servers."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp

from tests.conftest import ProxyProcess, Upstream, raw_request


async def deployed(proxy: ProxyProcess, upstream: Upstream, *args: str) -> None:
    result = await proxy.deploy("web", upstream.address, args=args)
    assert result.status == 0, result.stderr


async def test_get_reaches_the_target_with_forwarding_headers(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    url = f"{proxy.url}/some/path?q=1&p=a;b"
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Host": "app.test"}) as response:
        assert response.status == 200
        info = await response.json()
    assert info["upstream"] == "blue"
    assert info["path"] == "/some/path?q=1&p=a;b"
    headers = info["headers"]
    assert headers["Host"] == "app.test"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "app.test"
    assert len(headers["X-Request-ID"]) == 36
    assert headers["X-Request-Start"].startswith("t=")


async def test_client_request_id_is_kept_and_forwarded_headers_extended(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    sent = {
        "X-Request-ID": "abc-123",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example",
    }
    async with aiohttp.ClientSession() as session, session.get(proxy.url, headers=sent) as response:
        headers = (await response.json())["headers"]
    assert headers["X-Request-ID"] == "abc-123"
    assert headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "public.example"


async def test_forward_headers_off_ignores_client_supplied_values(proxy, upstreams):
    await deployed(proxy, upstreams[0], "--forward-headers=false")
    sent = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}
    async with aiohttp.ClientSession() as session, session.get(proxy.url, headers=sent) as response:
        headers = (await response.json())["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == f"127.0.0.1:{proxy.port}"


async def test_hop_by_hop_headers_are_not_forwarded(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    request = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-Kept: yes\r\n"
        b"Connection: close\r\n\r\n"
    )
    response = await raw_request(proxy.port, request)
    headers = json.loads(response.split(b"\r\n\r\n", 1)[1])["headers"]
    lowered = {name.lower() for name in headers}
    assert "x-kept" in lowered
    for hop in ("x-secret", "keep-alive", "proxy-authorization", "te"):
        assert hop not in lowered


async def test_bodies_stream_both_ways_with_content_length_and_chunked(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def chunks():
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.url}/echo", data=payload) as response:
            assert response.status == 200
            assert await response.read() == payload
        async with session.post(f"{proxy.url}/echo", data=chunks()) as response:
            assert response.status == 200
            assert await response.read() == payload


async def test_keep_alive_serves_many_requests_on_one_connection(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):
            async with session.get(proxy.url) as response:
                assert response.status == 200
                await response.read()
    peers = {r.transport.get_extra_info("peername") for r in upstreams[0].requests if r.transport}
    assert len(upstreams[0].requests) == 20
    assert len(peers) <= 2, "upstream connections should be reused from the pool"


async def test_pipelined_requests_are_answered_in_order(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    request = b"".join(b"GET /n%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    response = await raw_request(
        proxy.port, request + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert response.count(b"HTTP/1.1 200 OK") == 6
    paths = re.findall(rb'"path": "([^"]*)"', response)
    assert paths == [b"/n0", b"/n1", b"/n2", b"/n3", b"/n4", b"/last"]


async def test_head_request_gets_headers_only(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    response = await raw_request(
        proxy.port,
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    head, rest = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length:" in head
    assert rest.startswith(b"HTTP/1.1 200"), (
        "the HEAD response must have no body, so the next response follows"
    )


async def test_expect_100_continue_is_relayed(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    response = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"hello")


async def test_unrouted_request_gets_our_404_page(proxy):
    async with aiohttp.ClientSession() as session, session.get(proxy.url) as response:
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("text/html")
        assert "404" in await response.text()


async def test_unreachable_target_gets_502_and_is_logged(proxy, upstreams):
    await deployed(proxy, upstreams[0])
    await upstreams[0].stop()
    async with aiohttp.ClientSession() as session, session.get(proxy.url) as response:
        assert response.status == 502
        assert "502 Bad Gateway" in await response.text()
    error = await proxy.wait_for_log("Error while proxying")
    assert error["target"] == upstreams[0].address
    await proxy.wait_for_log("Request", status=502)


async def test_slow_target_gets_504_after_target_timeout(proxy, upstreams):
    await deployed(proxy, upstreams[0], "--target-timeout=300ms")
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/slow?s=1") as response:
        assert response.status == 504
        assert "504 Gateway Timeout" in await response.text()


async def test_target_closing_mid_response_closes_the_client_connection(proxy):
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /up "):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    result = await proxy.deploy("web", f"127.0.0.1:{port}")
    assert result.status == 0, result.stderr
    response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", read_timeout=5)
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"partial"), "the client sees the truncated body and then the close, not a hang"
    server.close()
