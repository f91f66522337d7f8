"""What kamal-proxy adds around each request, through the real CLI: the X-Kamal-Target header, logged
request and response headers, the client-IP header, cookie scoping and kamal-proxy's metrics
(kamal-proxy spec 4.7, 7.2, 9, 13, 14)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from tests.conftest import ProxyProcess


async def seen_by_upstream(proxy: ProxyProcess, path: str = "/", **headers: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}{path}", headers=headers) as response,
    ):
        assert response.status == 200
        return (await response.json())["headers"]


async def test_every_proxied_request_names_its_target(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await seen_by_upstream(proxy))["X-Kamal-Target"] == blue.address
    # Behind a trusted load balancer (forward headers on, the default without TLS) the chain grows.
    chained = await seen_by_upstream(proxy, **{"X-Kamal-Target": "edge-1:80"})
    assert chained["X-Kamal-Target"] == f"edge-1:80, {blue.address}"
    assert (await proxy.deploy("web", blue.address, args=("--forward-headers=false",))).status == 0
    forged = await seen_by_upstream(proxy, **{"X-Kamal-Target": "forged:1"})
    assert forged["X-Kamal-Target"] == blue.address


async def test_logged_request_and_response_headers(proxy, upstreams):
    blue, _ = upstreams
    deployed = await proxy.deploy(
        "web",
        blue.address,
        args=(
            "--log-request-header=Cache-Control",
            "--log-request-header=X-Forwarded-Proto,User-Agent,Host",
            "--log-response-header=X-Request-Start",
            "--log-response-header=Set-Cookie",
        ),
    )
    assert deployed.status == 0, deployed.stderr
    async with aiohttp.ClientSession() as session:
        url = f"{proxy.url}/respond?X-Request-Start=t%3D1"
        headers = {"Cache-Control": "no-cache", "User-Agent": 'tester "1"', "X-Forwarded-Proto": "https"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 200
        async with session.get(f"{proxy.url}/nothing", skip_auto_headers=["User-Agent"]) as response:
            assert response.status == 200
    first = await proxy.wait_for_log("Request", path="/respond")
    assert first["req_cache_control"] == "no-cache"
    assert first["req_user_agent"] == 'tester "1"'
    assert first["req_x_forwarded_proto"] == "https"
    assert first["req_host"] == f"127.0.0.1:{proxy.port}", "logged once, though forwarded as a line too"
    assert first["resp_x_request_start"] == "t=1"
    assert first["resp_set_cookie"] == ""
    second = await proxy.wait_for_log("Request", path="/nothing")
    assert (second["req_cache_control"], second["req_user_agent"], second["resp_x_request_start"]) == (
        "",
        "",
        "",
    )


async def test_client_ip_header_replaces_the_forwarded_chain(proxy, upstreams):
    blue, _ = upstreams
    assert (
        await proxy.deploy("web", blue.address, args=("--client-ip-header=CF-Connecting-IP",))
    ).status == 0
    seen = await seen_by_upstream(proxy, **{"cf-connecting-ip": "203.0.113.7", "X-Forwarded-For": "10.9.9.9"})
    assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert {k.lower(): v for k, v in seen.items()}["cf-connecting-ip"] == "203.0.113.7"
    without = await seen_by_upstream(proxy, **{"X-Forwarded-For": "10.9.9.9"})
    assert without["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"
    empty = await seen_by_upstream(proxy, **{"cf-connecting-ip": "", "X-Forwarded-For": "10.9.9.9"})
    assert empty["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"


async def test_scope_cookie_paths_moves_cookies_under_the_prefix(proxy, upstreams):
    blue, _ = upstreams
    deployed = await proxy.deploy("app", blue.address, args=("--path-prefix=/app", "--scope-cookie-paths"))
    assert deployed.status == 0, deployed.stderr
    cookies = [
        "a=1; Path=/",
        "b=2; Path=/admin; HttpOnly",
        "c=3",
        "d=4; Domain=other.example; Path=/",
        "e=5; Domain=localhost; Path=/x",
    ]
    query = "&".join(
        f"Set-Cookie={c.replace(' ', '%20').replace(';', '%3B').replace('=', '%3D')}" for c in cookies
    )
    url = f"http://localhost:{proxy.port}/app/respond?{query}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        got = response.headers.getall("Set-Cookie")
    assert got == [
        "a=1; Path=/app",
        "b=2; Path=/app/admin; HttpOnly",
        "c=3; Path=/app",
        "d=4; Domain=other.example; Path=/",
        "e=5; Path=/app/x; Domain=localhost",
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def metric(session: aiohttp.ClientSession, port: int, line_start: str) -> float | None:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_in_flight_gauge_and_excluded_paths(make_proxy, upstreams):
    blue, _ = upstreams
    port = free_port()
    proxy = await make_proxy(f"--metrics-port={port}")
    assert (await proxy.deploy("web", blue.address, args=("--exclude-metrics-path=/up,/ping",))).status == 0
    counted = 'kamal_proxy_http_requests_total{method="GET",service="web",status="200"}'
    in_flight = 'kamal_proxy_http_in_flight_requests{service="web"}'
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/up", "/ping?x=1", "/other"):
            async with session.get(f"{proxy.url}{path}") as response:
                assert response.status == 200
        assert await metric(session, port, counted) == 2.0
        assert await metric(session, port, in_flight) == 0.0
        slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=1"))
        await blue.started.wait()
        assert await metric(session, port, in_flight) == 1.0
        await (await slow).read()
        assert await metric(session, port, in_flight) == 0.0
    # Excluded requests are still logged.
    assert await proxy.wait_for_log("Request", path="/up")
