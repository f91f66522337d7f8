"""WebSocket upgrades are tunnelled byte for byte in both directions."""

from __future__ import annotations

import aiohttp


async def test_websocket_echo_through_the_proxy(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        for text in ("hello", "x" * 100_000, "bye"):
            await ws.send_str(text)
            message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.TEXT
            assert message.data == f"blue: {text}"
    await proxy.wait_for_log("Request", status=101, path="/ws")


async def test_websocket_is_closed_when_its_target_is_replaced(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "blue: before"
        result = await proxy.deploy("web", green.address)
        assert result.status == 0, result.stderr
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        await ws.send_str("after")
        assert (await ws.receive(timeout=5)).data == "green: after"
