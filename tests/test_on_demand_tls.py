"""On-demand TLS: certificates for unlisted hosts, approved one by one, issued in the first handshake."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ProxyProcess
from tests.pebble import Pebble
from tests.test_tls_acme import acme_flags, peer_issuer, start_proxy


class CheckEndpoint:
    """The operator's approval endpoint: 200 for the hosts it knows, 403 for the rest."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.asked: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> CheckEndpoint:
        app = web.Application()
        app.add_routes([web.get("/check", self.check)])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/check?tenant=1"
        return self

    async def check(self, request: web.Request) -> web.Response:
        host = request.query["host"]
        assert request.query["tenant"] == "1", "the URL's own query is kept"
        self.asked.append(host)
        if host in self.allowed:
            return web.Response(text="ok")
        return web.Response(status=403, text=f"{host} is not a customer")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def check_endpoint() -> AsyncIterator[CheckEndpoint]:
    endpoint = await CheckEndpoint({"allowed.test"}).start()
    yield endpoint
    await endpoint.stop()


def on_demand_args(tmp_path: Path, pebble: Pebble, url: str) -> tuple[str, ...]:
    return acme_flags(tmp_path, pebble, f"--tls-on-demand-url={url}")


async def handshake_fails(proxy: ProxyProcess, host: str, roots: str) -> bool:
    context = ssl.create_default_context(cadata=roots)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.https_port, ssl=context, server_hostname=host
        )
    except (ssl.SSLError, ConnectionError):
        return True
    writer.close()
    return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_allowed_host_gets_a_certificate_in_its_first_handshake_and_denied_does_not(
    tmp_path, pebble, acme_proxies, upstreams, check_endpoint, workers
):
    proxy = await start_proxy(tmp_path, pebble, acme_proxies, workers)
    args = on_demand_args(tmp_path, pebble, check_endpoint.url)
    result = await proxy.deploy("saas", upstreams[0].address, args=args)
    assert result.status == 0, result.stderr
    roots = pebble.roots_pem().decode()

    # No certificate exists yet: this handshake waits for the check and the order, then succeeds.
    issuer = await asyncio.wait_for(peer_issuer(proxy.https_port, "allowed.test", roots), 60)
    assert issuer.startswith("Pebble Intermediate CA")
    assert await handshake_fails(proxy, "denied.test", roots)
    assert check_endpoint.asked == ["allowed.test", "denied.test"]
    denied = await proxy.wait_for_log("TLS on-demand check denied", host="denied.test")
    assert "403" in denied["reason"] and "denied.test is not a customer" in denied["reason"]

    listing = await proxy.cli("list")
    assert "allowed.test" in listing.stdout and "Pebble Intermediate CA" in listing.stdout

    # Issued hosts do not depend on the check endpoint: restart with it gone, still served from the cache.
    await check_endpoint.stop()
    await proxy.stop()
    restarted = await start_proxy(tmp_path, pebble, acme_proxies, workers)
    await restarted.wait_for_log("Restored", service="saas")
    issuer = await peer_issuer(restarted.https_port, "allowed.test", roots)
    assert issuer.startswith("Pebble Intermediate CA")
    assert check_endpoint.asked == ["allowed.test", "denied.test"], "a cached host is not checked again"


async def test_a_path_is_checked_by_the_service_itself(tmp_path, pebble, acme_proxies, upstreams):
    proxy = await start_proxy(tmp_path, pebble, acme_proxies)
    args = on_demand_args(tmp_path, pebble, "/allowed")
    result = await proxy.deploy("saas", upstreams[0].address, args=args)
    assert result.status == 0, result.stderr
    roots = pebble.roots_pem().decode()
    issuer = await asyncio.wait_for(peer_issuer(proxy.https_port, "tenant.test", roots), 60)
    assert issuer.startswith("Pebble Intermediate CA")
    check = next(r for r in upstreams[0].requests if r.path == "/allowed")
    assert check.query["host"] == "tenant.test" and check.headers["Host"] == "tenant.test"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tls-on-demand-url=/check",), "TLS must be enabled to use a TLS on-demand URL"),
        (("--tls", "--tls-on-demand-url=/check", "--host=a.test"), "cannot set hosts when using a TLS"),
        (("--tls", "--tls-on-demand-url=//x"), "tls-on-demand-url must be a path or an absolute http(s) URL"),
        (("--tls", "--tls-on-demand-url=ftp://x/check"), 'unsupported scheme "ftp" in tls-on-demand-url'),
        (("--tls", "--tls-on-demand-url=http:///check"), "missing host in tls-on-demand-url"),
        (("--tls", "--tls-on-demand-url=/c", "--canonical-host=a.test"), "cannot set a canonical host"),
    ],
)
async def test_on_demand_options_are_checked_at_deploy(proxy, upstreams, args, message):
    result = await proxy.deploy("saas", upstreams[0].address, args=args)
    assert result.status != 0
    assert message in result.stderr
    assert (await proxy.cli("list")).stdout.count("saas") == 0
