"""The admin socket refuses malformed requests clearly and changes nothing when it does."""

from __future__ import annotations

import stat

import aiohttp


def admin_session(proxy) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=proxy.env["PYPROXY_SOCKET"]))


async def services(proxy) -> list:
    async with admin_session(proxy) as session, session.get("http://pyproxy/services") as response:
        return await response.json()


async def test_socket_is_owner_only(proxy):
    from pathlib import Path

    mode = Path(proxy.env["PYPROXY_SOCKET"]).stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_bad_json_is_refused_and_nothing_changes(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    before = await services(proxy)
    async with admin_session(proxy) as session:
        async with session.post("http://pyproxy/deploy", data=b"{not json") as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith("invalid JSON")
        async with session.post("http://pyproxy/deploy", json={"service": "web", "targets": "x"}) as response:
            assert response.status == 400
            assert '"targets" must be a list of strings' in (await response.json())["error"]
        async with session.post(
            "http://pyproxy/deploy", json={"service": "web", "targets": ["bad target!"]}
        ) as response:
            assert response.status == 400
            assert 'invalid target "bad target!"' in (await response.json())["error"]
        async with session.post(
            "http://pyproxy/deploy", json={"service": "web", "targets": ["a:1"], "hosts": ["bad*.x"]}
        ) as response:
            assert response.status == 400
        async with session.post("http://pyproxy/remove", json={"service": "nope"}) as response:
            assert response.status == 404
            assert (await response.json())["error"] == "service not found: nope"
    assert await services(proxy) == before
