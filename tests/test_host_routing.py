"""Routing through a running proxy: hosts, wildcards, the default service and path prefixes."""

from __future__ import annotations

import aiohttp

from tests.conftest import Upstream


async def get(proxy, path: str, host: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}{path}", headers={"Host": host}) as response,
    ):
        body = await response.json() if response.status == 200 else {}
        return response.status, body


async def test_hosts_wildcards_default_and_prefixes(proxy, upstreams):
    blue, green = upstreams
    red = await Upstream("red").start()
    try:
        for name, target, args in [
            ("exact", blue, ("--host=app.test",)),
            ("wild", green, ("--host=*.app.test",)),
            ("default", red, ()),
            ("api", green, ("--host=app.test", "--path-prefix=/api")),
            ("raw", red, ("--host=app.test", "--path-prefix=/raw", "--strip-path-prefix=false")),
        ]:
            result = await proxy.deploy(name, target.address, args=args)
            assert result.status == 0, f"{name}: {result.stderr}"

        status, body = await get(proxy, "/page", "APP.test:8080")
        assert (status, body["upstream"], body["path"]) == (200, "blue", "/page")
        status, body = await get(proxy, "/page", "eu.app.test")
        assert (status, body["upstream"]) == (200, "green")
        status, body = await get(proxy, "/page", "deep.eu.app.test")
        assert (status, body["upstream"]) == (200, "red"), "a wildcard covers exactly one label"
        status, body = await get(proxy, "/page", "other.test")
        assert (status, body["upstream"]) == (200, "red")
        status, body = await get(proxy, "/api/users?id=7", "app.test")
        assert (status, body["upstream"], body["path"]) == (200, "green", "/users?id=7")
        status, body = await get(proxy, "/api", "app.test")
        assert body["path"] == "/"
        status, body = await get(proxy, "/apiary", "app.test")
        assert (status, body["upstream"]) == (200, "blue"), "prefixes match whole segments"
        status, body = await get(proxy, "/raw/file", "app.test")
        assert (status, body["upstream"], body["path"]) == (200, "red", "/raw/file")
    finally:
        await red.stop()


async def test_matched_host_does_not_fall_back_to_the_default_service(proxy, upstreams):
    blue, green = upstreams
    assert (
        await proxy.deploy("api", blue.address, args=("--host=app.test", "--path-prefix=/api"))
    ).status == 0
    assert (await proxy.deploy("default", green.address)).status == 0
    status, _ = await get(proxy, "/other", "app.test")
    assert status == 404
    status, body = await get(proxy, "/other", "elsewhere.test")
    assert (status, body["upstream"]) == (200, "green")
